"""What the service answers: the JSON response models (also the OpenAPI schema) and a reading
as a DICOM SR (with the overlay as a Secondary Capture) or a FHIR Observation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from fastapi.responses import Response
from pydantic import BaseModel, Field
from pydicom.dataset import Dataset

from pneumoscan.core.logs import redact
from pneumoscan.models.on_disk import BUNDLE_WAIT_S

from .limits import Refusal, Rejected


class StageResult(BaseModel):
    model_id: str
    model_version: str = Field(description="sha256 prefix of the bundle's weights (+int8: and of the INT8 model, with "
                               "--backend onnx-int8)")
    task: str
    probability: float = Field(description="calibrated probability of the positive class")
    positive: str
    label: str
    threshold: float
    near_threshold: bool | None = Field(
        None, description="whether the probability lies within the 95 % confidence interval of the model's threshold "
        "(threshold_interval of /v1/model): the film could have been called either way; null when the model records "
        "no such interval")
    probabilities: dict[str, float]


class SecondStageResult(StageResult):
    warnings: list[str] = Field(description="why the film does not look like the films this stage was trained on "
                                "(its own image content check), or that this stage records no appearance of them")
    in_scope: bool = Field(description="false when this stage's warnings, or the film's (the first stage's), put the "
                           "film outside the model's scope: this reading does not apply")


class Prediction(StageResult):
    etiology: SecondStageResult | None = Field(
        None, description="the second stage's reading, its task named in it (etiology: bacteria vs virus): only when "
        "the service has a second stage and the film reads as the label that stage follows (pneumonia, for etiology). "
        "Where near_threshold is true the film may be normal, which that stage cannot tell: the web page shows its "
        "reading as indeterminate")
    heatmap: str | None = Field(None, description="with ?heatmap=true: Grad-CAM PNG (original | heatmap | blend) as a "
                                "data URL; with ?heatmap=map: the Grad-CAM map alone, 8-bit grayscale (255 = the "
                                "top of the scale /v1/model's heatmap_caption names: the model's, or this film's "
                                "maximum), with an alpha channel, transparent where the model did not read the film "
                                "(center-crop's cut-off edges), when it has such parts")
    image: str | None = Field(None, description="with ?image=true: the decoded film as a grayscale PNG data URL "
                              "(what a browser cannot show itself, e.g. DICOM), at most 1024 pixels a side")
    warnings: list[str] = Field(
        default_factory=list, description="why the film may be outside the model's scope (scored, but flagged)"
    )
    in_scope: bool = Field(description="false when a warning says the film is no frontal chest radiograph (the "
                           "warnings for which format=dicom-sr and fhir answer 422): the reading does not apply, and "
                           "its probability is kept for a reader who knows better")
    study_instance_uid: str | None = Field(None, description="DICOM uploads: the film's StudyInstanceUID")
    series_instance_uid: str | None = Field(None, description="DICOM uploads: the film's SeriesInstanceUID")
    sop_instance_uid: str | None = Field(None, description="DICOM uploads: the film's SOPInstanceUID")
    age_years: float | None = Field(None, description="DICOM uploads: PatientAge (or from the birth date)")
    sex: str | None = Field(None, description="DICOM uploads: PatientSex")
    view: str | None = Field(None, description="DICOM uploads: ViewPosition (or the view code's meaning)")
    modality: str | None = Field(None, description="DICOM uploads: Modality")
    study_date: str | None = Field(None, description="DICOM uploads: StudyDate, ISO 8601")
    card_digest: str = Field(description="the card_digest of the /v1/model answer of the service that read the film: "
                             "a reading whose card_digest is not that of the card a client holds was read by another "
                             "model, threshold or card (the service restarted with another bundle)")
    film_sha256: str = Field(description="sha256:HEX of the film's bytes as the service received them: which file "
                             "this reading is of (the web page knows a film dropped again by it where the browser "
                             "gives it no digest of its own, over plain HTTP from another computer)")


class ErrorBody(BaseModel):
    error: str = Field(description="what is wrong with the request")
    reason: Refusal = Field(description="the refusal's kind, a fixed word a client branches on (docs/api.md says "
                            "what to do for each) and /metrics counts it under (pneumoscan_refusals_total's reason)")
    reading: Prediction | None = Field(None, description="with reason heatmap_failed (500) of format=json: the film's "
                                       "reading, which stands (its heatmap alone failed), without the heatmap")


class ModelInfo(BaseModel):
    id: str
    version: str
    architecture: str
    task: str
    classes: list[str]
    positive: str
    threshold: float
    threshold_policy: str
    threshold_interval: list[float] = Field(description="the 95 % confidence interval of the threshold; a reading "
                                            "inside it is near the threshold; empty when not recorded")
    temperature: float
    image_size: int
    resize_policy: str
    val_metrics: dict[str, Any]
    data_fingerprint: str
    package_version: str
    caveats: list[str] = Field(description="why the readings, the threshold or the probabilities may not hold (a "
                               "validation AUC whose 95 % interval reaches 0.5, too few positive films to show the "
                               "threshold's sensitivity target, a temperature that could not be fitted)")
    heatmap_scale: float | None = Field(description="the raw Grad-CAM value its heatmaps draw as their top colour, "
                                        "the same for every film; for an ensemble, 1.0: each member's map on that "
                                        "member's own scale; null: each map scaled to its own film's maximum")
    heatmap_caption: str = Field(description="what its heatmaps show and on which scale: the caption of a heatmap "
                                 "overlay (its PNG Description), and the web page's legend")
    heatmap_top: str = Field(description="the words at the top of its heatmaps' colour scale")
    heatmap_top_spoken: str = Field(description="the top of the colour scale as a screen reader says it, naming the "
                                    "scale")
    heatmap_negative: str = Field(description="what a heatmap overlay's caption adds for a film read as its first "
                                  "class (the map is still of the evidence for the positive one); the web page's "
                                  "legend says it too")
    heatmap_empty: str = Field(description="what a heatmap overlay's caption adds for an empty map (no pixel of the "
                               "film read above level 0 of the heatmap=map PNG); the web page's legend says it too")
    content_checked: bool = Field(description="whether films are compared with the training films' appearance (an "
                                  "'image content' warning when unlike them); false for a bundle that records none")
    follows: list[str] = Field(description="the tasks of the stages this model reads a film after (an etiology "
                               "model follows pneumonia); empty for a model that reads a film alone. Served alone, "
                               "it cannot say the other call of those stages (normal), so the web page colours none "
                               "of its calls as a finding or its absence")
    intended_use: str = Field(description="what the model is for (MODEL_CARD.md)")
    out_of_scope: list[str] = Field(description="uses the model is not for")
    trained_by: str | None = Field(description="the pneumoscan versions that trained the weights, in MODEL_CARD.md's "
                                   "words (a run resumed from another version's checkpoint names both); null where "
                                   "the card records none (an ensemble, a card older than the record)")
    external_evaluations: list[dict[str, Any]] = Field(description="evaluations on other data recorded in the card, "
                                                       "each with its figures by subgroup (subgroups; a "
                                                       "three-class decision's accuracy by subgroup, "
                                                       "three_class_subgroups) and their tests of a difference "
                                                       "across groups where evaluate --add-to-card --by recorded "
                                                       "them")
    threshold_records: list[dict[str, Any]] = Field(description="thresholds chosen after training, newest last")


class FilmFormat(BaseModel):
    name: str = Field(description="the registered reader's name (Pillow, DICOM, or a site's own)")
    formats: list[str] = Field(description="the formats it reads, as a refusal names them (JPEG, PNG)")
    media_types: list[str] = Field(description="the content types an upload of them is taken as")
    suffixes: list[str] = Field(description="the lower-case file-name endings taken as them (.dcm)")


class ServiceInfo(ModelInfo):
    etiology: ModelInfo | None = Field(description="the second stage's card (its task: etiology, or one of your own); "
                                       "null when the service has none")
    max_upload_bytes: int
    film_formats: list[FilmFormat] = Field(description="the film formats the service reads, one entry a registered "
                                           "reader, in the order they are asked: the web page names and describes "
                                           "them from it")
    heatmaps: bool = Field(description="whether this service draws heatmaps: false when it was started without them "
                           "(serve --no-heatmaps) or with the onnx-int8 backend, where a heatmap is refused with 422")
    card_digest: str = Field(description="sha256:HEX of this answer's other fields as JSON with sorted keys and no "
                             "spaces, named by each reading (/v1/predict): whether a reading was read with this "
                             "card, its second stage, image content check and upload limit included")


class Health(BaseModel):
    status: str = Field(description="ok; degraded (HTTP 200) while predictions go on, once heatmaps are unavailable "
                        "or a bundle's files on disk changed, or while the last run of a model failed with an "
                        "internal error (until a run succeeds), or while the API key file is refused (every request "
                        "that needs a key gets 503), or while the rate-limit store does not answer (each prediction "
                        "request gets 503); unhealthy (HTTP 503) once a model has produced a "
                        f"non-finite score, or while a bundle's folder does not answer within {BUNDLE_WAIT_S:g} s")
    model_id: str
    model_version: str = Field(description="the version /v1/model and each reading give: a bundle retrained on the "
                               "same films has the same model_id")
    reason: str | None = Field(None, description="why the service is degraded or unhealthy")


# 429: a client past its serve --rate-limit; 500: a non-finite score or a failed heatmap (docs/api.md), and a bug,
# which the guard answers as internal_error
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 408, 413, 415, 422, 429, 500, 503)}


PREDICT_OPTIONS = ("heatmap", "image", "format")  # /v1/predict's query parameters, the only ones the access log keeps
ReportFormat = Literal["json", "dicom-sr", "fhir"]  # its format's values
HeatmapWord = Literal["map"]  # its heatmap's value besides a boolean


def check_options(fmt: str, heatmap: bool | str, image: bool, given: Iterable[str] = ()) -> None:
    """Refuse a query parameter ``/v1/predict`` does not know (``given``: the names sent, each as often as it was
    sent; ``heatmaps=true`` would be dropped, and the client would not know it was), one sent twice (only the last
    would count: ``format=fhir&format=json`` answered JSON), and an option the chosen format has no place for: it
    would cost a Grad-CAM or a decode and be dropped."""
    names = list(given)
    if unknown := sorted(set(names) - set(PREDICT_OPTIONS)):
        raise Rejected(422, f"unknown query parameter(s) {', '.join(unknown)}: /v1/predict takes "
                            f"{', '.join(PREDICT_OPTIONS)}")
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise Rejected(422, f"query parameter(s) {', '.join(repeated)} sent more than once: send each once (only "
                            "one value can count, and the answer would not say which)")
    if fmt == "json":
        return
    if image:
        raise Rejected(422, f"image=true goes with format=json: a {fmt} answer carries no decoded film")
    if heatmap == "map":
        raise Rejected(422, "heatmap=map goes with format=json: a report carries the overlay a reader can see "
                            "(format=dicom-sr&heatmap=true)")
    if heatmap and fmt == "fhir":
        raise Rejected(422, "heatmap=true goes with format=json or dicom-sr: a FHIR Observation carries no image")


def report(fmt: str, reading: dict, source: Dataset | None, png: bytes | None, model: str, version: str,
           mode: str) -> Response:
    """The reading as a DICOM SR (plus the overlay as a Secondary Capture, multipart/related) or a FHIR Observation
    (with the film's patient as its subject), identified as ``predict`` identifies them: the same film scored the
    same way (``mode``: the backend) gets the same UIDs and identifier. ``source``: the film's header, as its decode
    read it (``uploads.decode_described``), without its pixels."""
    from pneumoscan.interop import fhir, sr
    from pneumoscan.interop.reports import dicom_multipart

    headers = {"Cache-Control": "no-store"}
    try:
        if fmt == "fhir":
            return Response(fhir.observation_json(reading, model, version, mode, source),
                            media_type="application/fhir+json", headers=headers)
        parts = sr.report_files(source, reading, png, model, version, mode)
    except ValueError as e:  # a DecodeError, a source without its UIDs or with a malformed attribute, a model that
        # does not read pneumonia, highdicom's refusal: each with a reason that quotes no patient value
        raise Rejected(422, f"cannot report this reading: {redact(str(e))}", kind="not_reportable") from None
    if len(parts) == 1:
        return Response(parts[0], media_type="application/dicom", headers=headers)
    body, content_type = dicom_multipart(parts)
    return Response(body, headers=headers, media_type=content_type)
