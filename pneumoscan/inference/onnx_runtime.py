"""Running a bundle's exported ONNX models with ONNX Runtime: the sessions, the graphs' input and output names, the
sidecars (``model.onnx.json``, ``model.int8.onnx.json``) and the checks that an exported file is the one its bundle
recorded. Writing those files is :mod:`.export`'s.

Scoring needs no torch: this module imports only ONNX Runtime and the bundle's card, so ``--backend onnx`` starts
without loading torch (tests/test_startup.py holds it so).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from pneumoscan.core.cpus import model_threads
from pneumoscan.core.digests import file_sha256, hex_part
from pneumoscan.models.card import (ONNX_NAME, WEIGHTS, BundleCard, check_finite_weights, checked_bytes, checked_card,
                                   load_card, out_of_fold_ensemble, read_bundle_json, verify_file)
from pneumoscan.models.run_folder import RunFolder

# What ONNX Runtime raises for a file it cannot load (truncated, not ONNX, an unsupported graph)
_LOAD_ERRORS = (
    ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
    ort.capi.onnxruntime_pybind11_state.InvalidGraph, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
    ort.capi.onnxruntime_pybind11_state.NoSuchFile, ort.capi.onnxruntime_pybind11_state.RuntimeException,
)  # fmt: skip
# where `export --int8` (pneumoscan.training.quantize) writes and `--backend onnx-int8` looks
INT8_NAME = "model.int8.onnx"
INPUT, OUTPUT = "image", "logits"
ONNX_DIGEST = "onnx_sha256"  # the sidecar's record of the ONNX file it describes (:func:`described`)


def spec_path(onnx_path: Path | str) -> Path:
    """The preprocessing spec that belongs to an exported model: ``model.onnx`` -> ``model.onnx.json``."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".json")


def weights_digest(bundle: Path | str) -> str:
    """Hex SHA-256 of the bundle's weights file (the sidecar's ``weights_sha256``)."""
    return hex_part(file_sha256(Path(bundle) / WEIGHTS))


def model_version(bundle: Path | str, backend: str = "torch", card: BundleCard | None = None) -> str:
    """The version every result states (predict's rows, web answers, SR, FHIR): a prefix of the sha256 of the
    bundle's weights, so a result can be traced to the bundle that made it. Read with the INT8 model
    (``onnx-int8``), whose scores and thresholds are its own, the INT8 file's digest follows, so a result names the
    model whose threshold it states. With the ``card`` a model was loaded and checked by, the digests it records:
    the files on disk may have been replaced since (a result named the weights on disk at its first row)."""
    recorded = card.files if card is not None else {}

    def digest(name: str) -> str:
        return hex_part(recorded.get(name) or file_sha256(Path(bundle) / name))[:12]

    version = f"sha256:{digest(WEIGHTS)}"
    if backend == "onnx-int8":
        version += f"+int8:{digest(INT8_NAME)}"
    return version


# False within :func:`without_arena`: a ContextVar, so that a service's threads keep their sessions' arenas
_ARENA: ContextVar[bool] = ContextVar("onnx_arena", default=True)


@contextmanager
def without_arena() -> Iterator[None]:
    """Sessions made in the block allocate each run's tensors and free them when it ends, where ONNX Runtime's CPU
    memory arena keeps its largest run's memory (grown a power of two at a time) for as long as the session lives:
    for a step that runs several sessions through large batches once each (``export --int8 --cv`` of a two-member
    ensemble at 224 px: 2.7 GB at peak, 1.1 GB of it the arena of the FP32 session, which scores the calibration
    films first and is held to the end; 1.4 GB without). The same kernels run on the same batches: the scores are
    the same."""
    token = _ARENA.set(False)
    try:
        yield
    finally:
        _ARENA.reset(token)


def session(model: Path | str | bytes, optimized: bool = True) -> ort.InferenceSession:
    """A CPU session with as many intra-op threads as torch uses (:func:`~pneumoscan.core.cpus.model_threads`:
    never more than the cores this process may use), so both backends compete on equal terms. ``optimized``: False
    runs the graph as written, node by node (INT8 calibration reads every node's output). A file ONNX Runtime cannot
    load (truncated, not ONNX) is a ValueError with its reason."""
    options = _options()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        # the file's bytes, read by Python: ONNX Runtime refuses a path that is not UTF-8 (a TypeError)
        source = model if isinstance(model, bytes) else Path(model).read_bytes()
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except (*_LOAD_ERRORS, OSError) as e:
        name = "the exported model" if isinstance(model, bytes) else str(model)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{name} is not a loadable ONNX model: {reason}") from None


def bundle_model(path: Path, recorded: str | None) -> ort.InferenceSession:
    """A session on a bundle's ONNX file (``model.onnx``, ``model.int8.onnx``) from the bytes checked
    (:func:`checked_bytes` against ``recorded``), its values all in the file and finite (:func:`check_finite`): the
    one load of either file, for both ONNX backends."""
    data = checked_bytes(path, recorded)
    check_finite(data, path)  # first: ONNX Runtime would open the files a tensor's external data names
    return session(data)


def check_finite(model: bytes, path: Path) -> None:
    """Refuse (ValueError) a graph whose floating-point values held in the file (initializers, sparse ones, tensor
    attributes such as a Constant node's, float attributes such as a LeakyRelu's alpha or a BatchNormalization's
    epsilon; in subgraphs and local functions too) hold a NaN or an infinity, or any of whose tensors keeps its
    values in another file (external data), naming ``path`` and the first such value. A file damaged and sealed again
    (its SHA-256 recorded anew) passes the digest checks, and the model then refused each film in turn (serve: 500,
    then unhealthy) instead of never starting. External data is refused wherever it points, in the bundle's folder
    too: bundle.json's checksums cover the model's own file alone, so the other file's values could change unseen
    (and ONNX Runtime, given the model's bytes, looks for it in the working directory, not the bundle); pneumoscan's
    exports write every value into the model's file. Bytes that are no ONNX protobuf are refused too, as
    :func:`session` refuses them: this parse comes first, so that ONNX Runtime never opens a file the graph names."""
    from google.protobuf.message import DecodeError

    try:
        parsed = _graph_schema().FromString(model)
    except DecodeError:
        raise ValueError(f"{path} is not a loadable ONNX model: its bytes are not an ONNX protobuf (cut short, or "
                         "another kind of file)") from None
    remedy = "restore the bundle from a good copy, or export it again"
    for what, held in _held(parsed.graph, [node for function in parsed.functions for node in function.node]):
        if isinstance(held, np.ndarray):  # a float attribute's values
            values: np.ndarray | None = held
        elif held.data_location == _EXTERNAL or held.external_data:
            location = {entry.key: entry.value for entry in held.external_data}.get("location", "")
            raise ValueError(f"{path}: its {what} keeps its values in another file ({location!r}), which no "
                             "checksum of the bundle covers; a bundle's ONNX model holds all its values (pneumoscan's "
                             f"export writes them so): {remedy}")
        else:
            values = _floats(held)
        if values is not None and not np.isfinite(values).all():
            raise ValueError(f"{path}: its {what} holds {int((~np.isfinite(values)).sum())} NaN or infinite values "
                             f"of {values.size}, which no model computes with (a damaged file, or the export of a "
                             f"training that diverged); {remedy}")


def _held(graph: Any, nodes: Iterable[Any] = ()) -> Iterator[tuple[str, Any]]:
    """Every tensor ``graph`` and ``nodes`` hold (a TensorProto: a sparse tensor's values and indices, each) and
    every node's float attribute (its values as an array), with what holds it, the nodes' subgraphs' included. A
    field not in the file reads as its empty default (a tensor of no type, a graph of nothing), which gives nothing;
    ``f``, a float attribute's one value, only where the file holds it."""
    yield from ((f"initializer {t.name!r}", t) for t in graph.initializer)
    for sparse in graph.sparse_initializer:
        yield from ((f"sparse initializer {sparse.values.name!r}", t) for t in (sparse.values, sparse.indices))
    for node in [*graph.node, *nodes]:
        what = f"{node.op_type} node {node.name or ([*node.output] or [''])[0]!r}"
        for attribute in node.attribute:
            for tensor in [attribute.t, *attribute.tensors,
                           *(t for sparse in [attribute.sparse_tensor, *attribute.sparse_tensors]
                             for t in (sparse.values, sparse.indices))]:
                yield what, tensor
            if floats := [*([attribute.f] if attribute.HasField("f") else []), *attribute.floats]:
                yield f"attribute {attribute.name!r} of {what}", np.array(floats, np.float32)
            for subgraph in [attribute.g, *attribute.graphs]:
                yield from _held(subgraph)


def _floats(tensor: Any) -> np.ndarray | None:
    """A TensorProto's values as floats (bfloat16 widened to float32), None for a type that is not floating-point."""
    if (kind := _FLOATING.get(tensor.data_type)) is None:
        return None
    raw, field = kind
    values = np.frombuffer(tensor.raw_data, raw) if tensor.raw_data else np.asarray(getattr(tensor, field)).astype(raw)
    if tensor.data_type == _BFLOAT16:  # a float32's upper half
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.view(np.float16) if raw == "<u2" else values


# TensorProto.DataType's floating-point types (onnx.proto): FLOAT, DOUBLE, FLOAT16, BFLOAT16, each with the type of
# its raw data (little-endian, the format's rule) and the field holding its values otherwise (float16 and bfloat16:
# the low 16 bits of each int32_data value)
_BFLOAT16 = 16
_EXTERNAL = 1  # TensorProto.DataLocation: the values in another file, which external_data names
_FLOATING = {1: ("<f4", "float_data"), 11: ("<f8", "double_data"), 10: ("<u2", "int32_data"),
             _BFLOAT16: ("<u2", "int32_data")}


@functools.cache
def _graph_schema() -> type:
    """The message class of the part of onnx.proto's ModelProto that holds a graph's tensors and float attributes,
    for protobuf's parser: ONNX Runtime shows no initializer's values, and the ``onnx`` package, which parses the
    whole format, imports ml_dtypes (0.6 s of CPU, ten times an ONNX backend's load of an efficientnet_lite0
    bundle); this parse takes 10 ms for that bundle. Field numbers are onnx.proto's, which the format keeps for ever
    (old files stay readable); fields not named here are skipped."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    kinds = descriptor_pb2.FieldDescriptorProto
    messages = {  # message: (field, number, type or message, repeated)
        "Model": [("graph", 7, "Graph", False), ("functions", 25, "Function", True)],
        "Function": [("node", 7, "Node", True)],
        "Graph": [("node", 1, "Node", True), ("initializer", 5, "Tensor", True),
                  ("sparse_initializer", 15, "Sparse", True)],
        "Node": [("output", 2, kinds.TYPE_STRING, True), ("name", 3, kinds.TYPE_STRING, False),
                 ("op_type", 4, kinds.TYPE_STRING, False), ("attribute", 5, "Attribute", True)],
        "Attribute": [("name", 1, kinds.TYPE_STRING, False), ("f", 2, kinds.TYPE_FLOAT, False),
                      ("t", 5, "Tensor", False), ("g", 6, "Graph", False), ("floats", 7, kinds.TYPE_FLOAT, True),
                      ("tensors", 10, "Tensor", True), ("graphs", 11, "Graph", True),
                      ("sparse_tensor", 22, "Sparse", False), ("sparse_tensors", 23, "Sparse", True)],
        "Sparse": [("values", 1, "Tensor", False), ("indices", 2, "Tensor", False)],
        "Tensor": [("data_type", 2, kinds.TYPE_INT32, False), ("float_data", 4, kinds.TYPE_FLOAT, True),
                   ("int32_data", 5, kinds.TYPE_INT32, True), ("name", 8, kinds.TYPE_STRING, False),
                   ("raw_data", 9, kinds.TYPE_BYTES, False), ("double_data", 10, kinds.TYPE_DOUBLE, True),
                   ("external_data", 13, "Entry", True), ("data_location", 14, kinds.TYPE_INT32, False)],
        "Entry": [("key", 1, kinds.TYPE_STRING, False), ("value", 2, kinds.TYPE_STRING, False)],
    }
    schema = descriptor_pb2.FileDescriptorProto(name="pneumoscan_onnx_tensors.proto", package="pneumoscan_onnx")
    for message, fields in messages.items():
        schema.message_type.add(name=message, field=[
            kinds(name=name, number=number, label=kinds.LABEL_REPEATED if repeated else kinds.LABEL_OPTIONAL,
                  **({"type": kinds.TYPE_MESSAGE, "type_name": f".pneumoscan_onnx.{kind}"} if isinstance(kind, str)
                     else {"type": kind}))
            for name, number, kind, repeated in fields])
    pool = descriptor_pool.DescriptorPool()  # its own pool: the onnx package's, where loaded, is untouched
    pool.Add(schema)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("pneumoscan_onnx.Model"))


def _options() -> ort.SessionOptions:
    """Every session's options: :func:`~pneumoscan.core.cpus.model_threads` intra-op threads, one inter-op, and the
    CPU memory arena unless within :func:`without_arena`."""
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = _ARENA.get()
    options.intra_op_num_threads = model_threads()
    options.inter_op_num_threads = 1
    return options


def optimize_graph(model: Path, out: Path) -> None:
    """Write to ``out`` the graph ``model`` after ONNX Runtime's basic optimisations (constant folding, redundant
    nodes removed), the step of ``quant_pre_process`` that makes a session: its own takes ONNX Runtime's default
    threads, one a physical core of the machine whatever affinity or a CPU quota allow (under ``taskset -c 0`` it
    started two), and takes no session options; this one is sized as every other (:func:`_options`)."""
    options = _options()
    options.optimized_model_filepath = str(out)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ort.InferenceSession(Path(model).read_bytes(), options, providers=["CPUExecutionProvider"])


def described(model: Path | str) -> dict[str, str]:
    """The sidecar's record of the ONNX file it describes (hex SHA-256 under ``onnx_sha256``): ``weights_sha256`` ties
    the sidecar to the weights, this ties the file to the sidecar, so that another model's ONNX file put beside a
    sound sidecar is refused (:func:`check_described`) where the card records no checksums or had them recorded
    again by hand."""
    return {ONNX_DIGEST: hex_part(file_sha256(model))}


def check_described(model: Path, sidecar: Mapping[str, Any], remedy: str, digest: str | None = None) -> None:
    """Refuse (ValueError) ``model`` when its sidecar records another file's SHA-256 (:func:`described`): another
    model's ONNX file copied in, its scores the other model's. A sidecar written before it kept the record says
    nothing here, so the file passes, as a bundle without checksums does. ``digest``: the file's ``sha256:HEX`` as
    bundle.json recorded it and :func:`verify_file` has just found it, so that the file is not read twice."""
    actual = hex_part(digest) if digest else None
    if (recorded := sidecar.get(ONNX_DIGEST)) is not None and recorded != (
            actual := actual or described(model)[ONNX_DIGEST]):
        raise ValueError(f"{model} is not the model {spec_path(model).name} describes: its SHA-256 is "
                         f"{actual[:12]}..., the sidecar records {str(recorded)[:12]}...; {remedy}")


def check_matches_card(path: Path, sidecar: Mapping[str, Any], card: BundleCard, remedy: str,
                       thresholds: bool = True) -> None:
    """Refuse (ValueError) a sidecar whose model, task, classes, preprocessing, temperature or (``thresholds``: the
    FP32 model's, whose thresholds are the card's) thresholds are not the card's: the ONNX backends score with the
    card's and the graph is the sidecar's model, so a card or a sidecar from another bundle, checksums recorded again
    by hand, gave the other model's scores under this one's name. A key an older sidecar lacks is not compared."""
    expected = {"model": card.model, "task": card.task, "classes": list(card.classes), "positive": card.positive,
                "size": card.size, "resize_policy": card.resize_policy, "source_size": card.source_size,
                "source_quality": card.source_quality, "decode_target": card.spec.decode_target, "mean": card.mean,
                "std": card.std, "temperature": card.temperature}
    if thresholds:
        expected |= {"threshold": card.threshold, "tta_threshold": card.tta_threshold}
    if differ := [key for key, value in expected.items() if key in sidecar and sidecar[key] != value]:
        raise ValueError(f"{spec_path(path)} describes another model than bundle.json: its "
                         + ", ".join(f"{key} {sidecar[key]!r} (bundle.json: {expected[key]!r})" for key in differ)
                         + f"; {remedy}")


def read_sidecar(model: Path | str, strict: bool = False) -> dict:
    """The JSON object of ``model``'s sidecar, read one way wherever one is read (the FP32 and INT8 models' checks,
    the model card, ``threshold``, ``export --int8``): through :func:`read_bundle_json`, so a pipe or a device in
    its place is refused instead of read without end. When missing, unreadable or not an object: empty, for the
    checks that refuse that with their own remedy, or with ``strict`` the error saying why, for a reader that
    needs the figures."""
    path = spec_path(model)
    try:
        sidecar = read_bundle_json(path)
    except (OSError, ValueError):
        if strict:
            raise
        sidecar = None
    if isinstance(sidecar, dict):
        return sidecar
    if strict:
        raise ValueError(f"{path} holds no JSON object")
    return {}


def verify_onnx(bundle: Path | str, card: BundleCard, weights: str | None = None) -> None:
    """Refuse (ValueError) a BUNDLE/model.onnx that is not the export of the bundle's current weights (its sidecar
    says so), whose bytes differ from those recorded when it was exported (in bundle.json, and in the sidecar:
    :func:`check_described`), or whose sidecar describes another model than the card (:func:`check_matches_card`).
    Never re-exported silently: the remedy is the explicit ``pneumoscan export``. ``weights``: the weights' SHA-256
    as the caller has just found it (:func:`verify_file`'s return), so that the file is not read again; None: read
    here."""
    existing = Path(bundle) / ONNX_NAME
    remedy = f"run `pneumoscan export {bundle}` to export it again from the bundle's weights"
    if not existing.exists():
        raise ValueError(f"{existing} is missing, but bundle.json lists it; {remedy}")
    sidecar = read_sidecar(existing)
    if "weights_sha256" not in sidecar:
        raise ValueError(f"{spec_path(existing)} is missing or unreadable, so nothing ties {existing} to the "
                         f"bundle's weights; {remedy}")
    if (exported_from := sidecar["weights_sha256"]) != (current := hex_part(weights or weights_digest(bundle))):
        check_finite_weights(bundle, card)  # weights sealed again over a NaN: that is the reason, not the export
        raise ValueError(f"{existing} is stale: it was exported from other weights ({str(exported_from)[:12]}...) "
                         f"than {WEIGHTS} ({current[:12]}...); {remedy}")
    if card.files:  # a bundle older than the record (warned of at load) has only the sidecar's ties
        if ONNX_NAME not in card.files:
            raise ValueError(f"{existing}: bundle.json records no checksum for it (pneumoscan export did not write "
                             f"it there); {remedy}")
        verify_file(bundle, card, ONNX_NAME, remedy)
        if spec_path(existing).name in card.files:  # bundles exported before it was recorded have none
            verify_file(bundle, card, spec_path(existing).name, remedy)
    check_described(existing, sidecar, remedy, card.files.get(ONNX_NAME))  # the file the sidecar was written for
    check_matches_card(existing, sidecar, card, remedy)


class Int8Key:
    """The keys of the INT8 sidecar's own figures (``model.int8.onnx.json``), each spelled here alone: written by
    :func:`~pneumoscan.evaluation.operating_point.int8_figures` and ``export --int8``
    (:mod:`pneumoscan.training.quantize`), read by :class:`Int8Operating`, the model card, ``threshold``'s record
    and ``export``'s line. A misspelt name is an AttributeError where it is used, never a figure silently read as
    missing."""

    THRESHOLD = "int8_threshold"
    TTA_THRESHOLD = "int8_tta_threshold"
    THRESHOLD_INTERVAL = "int8_threshold_interval"
    TTA_THRESHOLD_INTERVAL = "int8_tta_threshold_interval"
    THRESHOLD_CAVEAT = "int8_threshold_caveat"
    THRESHOLD_POLICY = "threshold_policy"  # the card's policy, naming the films that chose the INT8 thresholds
    VAL_METRICS = "int8_val_metrics"  # the INT8 model's figures at its threshold on those films
    CHOSEN_ON = "int8_thresholds_chosen_on"  # those films, with their folders
    VALIDATION_IMAGES = "validation_images"
    LEFT_OUT = "left_out"  # the files given with those films that chose nothing, and why, as evaluate records them
    VAL_AUC_FP32 = "val_auc_fp32"
    VAL_AUC_INT8 = "val_auc_int8"
    MAX_PROBABILITY_CHANGE = "max_probability_change"
    CALIBRATION_IMAGES = "calibration_images"
    MAX_MEMBER_MEAN_CHANGE = "max_member_mean_change"  # an ensemble of cv runs: the shipped graph against its members'
    THREE_CLASS = "int8_three_class"  # a task of more than two classes: the macro AUC of both models, and their films
    MACRO_AUC_FP32 = "macro_auc_fp32"  # under THREE_CLASS
    MACRO_AUC_INT8 = "macro_auc_int8"


@dataclasses.dataclass(frozen=True)
class Int8Operating:
    """The INT8 model's own operating point, which its sidecar keeps under the :class:`Int8Key` keys (written from
    :func:`~pneumoscan.evaluation.operating_point.int8_figures` by ``export --int8`` and ``threshold``): quantisation
    moves the scores, so ``--backend onnx-int8`` labels at these, never at the card's FP32 ones. The one reading of
    those keys, for the sidecar's writer (:func:`~.export.write_int8_spec`) and its readers (:func:`int8_model`, the
    Predictor, the model card, ``threshold``'s record, ``export``'s line)."""

    threshold: float
    tta_threshold: float | None
    threshold_interval: list[float]
    tta_threshold_interval: list[float]
    threshold_caveat: str
    threshold_policy: str | None
    val_metrics: dict

    @classmethod
    def from_figures(cls, figures: Mapping[str, Any]) -> Int8Operating:
        """Read from the ``int8_*`` figures (a sidecar, or what :func:`int8_figures` gives); KeyError without the
        threshold or the validation figures, which make the INT8 thresholds validated ones."""
        return cls(figures[Int8Key.THRESHOLD], figures.get(Int8Key.TTA_THRESHOLD),
                   figures.get(Int8Key.THRESHOLD_INTERVAL, []), figures.get(Int8Key.TTA_THRESHOLD_INTERVAL, []),
                   figures.get(Int8Key.THRESHOLD_CAVEAT, ""), figures.get(Int8Key.THRESHOLD_POLICY),
                   figures[Int8Key.VAL_METRICS])  # fmt: skip

    @classmethod
    def validated(cls, figures: Mapping[str, Any]) -> Int8Operating | None:
        """:meth:`from_figures`, or None when the figures hold no validated INT8 thresholds (a sidecar that
        ``export --int8`` did not write whole, or none at all), which ``--backend onnx-int8`` refuses."""
        try:
            return cls.from_figures(figures)
        except KeyError:
            return None

    def sidecar_fields(self) -> dict:
        """The thresholds and their intervals under the keys every reader of a sidecar reads (an FP32 model's too),
        so another ONNX runtime labels INT8 scores at the INT8 thresholds."""
        return {"threshold": self.threshold, "tta_threshold": self.tta_threshold,
                "threshold_interval": self.threshold_interval, "tta_threshold_interval": self.tta_threshold_interval}

    def card_fields(self) -> dict:
        """The :class:`BundleCard` fields the INT8 model replaces when it is the one read: its thresholds, their
        intervals, caveat and policy, and its validation figures; the card's evaluations are the FP32 model's, at
        the FP32 threshold, so none is kept."""
        policy = {} if self.threshold_policy is None else {"threshold_policy": self.threshold_policy}
        return {**self.sidecar_fields(), **policy, "threshold_caveat": self.threshold_caveat,
                "val_metrics": self.val_metrics, "external_evaluations": []}


def int8_model(bundle: Path | str, card: BundleCard | None = None) -> tuple[ort.InferenceSession, dict]:
    """The INT8 session and its sidecar, checked by :func:`int8_sidecar`. ``card``: the one the caller loaded the
    bundle by (read here when None), so that both describe one bundle."""
    card = card if card is not None else load_card(bundle)
    sidecar = int8_sidecar(bundle, card)
    return bundle_model(Path(bundle) / INT8_NAME, card.files.get(INT8_NAME)), sidecar


def int8_card(card: BundleCard, sidecar: Mapping[str, Any]) -> BundleCard:
    """``card`` as the INT8 model labels by: quantisation moves the scores, so its thresholds, their intervals and
    caveat, and its validation figures are its sidecar's (:meth:`Int8Operating.card_fields`)."""
    return dataclasses.replace(card, **Int8Operating.from_figures(sidecar).card_fields())


def int8_sidecar(bundle: Path | str, card: BundleCard) -> dict:
    """The INT8 model's sidecar (thresholds included: :class:`Int8Operating`); refused when the model is missing,
    was made from other weights, its thresholds were never chosen, or either file differs from what ``export
    --int8`` wrote (the checksums in bundle.json; the sidecar's thresholds turn INT8 scores into labels), or when
    those thresholds are not the probabilities ``card``'s are (:func:`checked_card`)."""
    out = Path(bundle) / INT8_NAME
    sidecar_path = spec_path(out)
    split = RunFolder.of(bundle).split  # the run's own split, where the bundle sits in its run folder
    # an ensemble of cv runs is calibrated out of fold: its members trained on every film a --data could give
    command = f"pneumoscan export {bundle} --int8 " + ("--cv CV_DIR ... (the runs it was built from)"
                                                       if out_of_fold_ensemble(card) else
                                                       f"--data {split if split.is_file() else 'RUN/split.csv'}")
    remedy = f"run `{command}` again"
    sidecar = read_sidecar(out)
    chosen = Int8Operating.validated(sidecar)
    if not out.exists() or chosen is None:
        raise ValueError(f"{bundle} has no validated {INT8_NAME}: run `{command}`")
    if sidecar.get("weights_sha256") != weights_digest(bundle):
        check_finite_weights(bundle, card)  # weights sealed again over a NaN: that is the reason, not the export
        raise ValueError(f"{out} was made from other weights than {bundle}'s: {remedy}")
    if card.files:  # a bundle that records checksums: both files must be the ones quantisation wrote
        for name in (INT8_NAME, sidecar_path.name):
            if name not in card.files:
                raise ValueError(f"{Path(bundle) / name}: bundle.json records no checksum for it; {remedy}")
            verify_file(bundle, card, name, remedy)
    check_described(out, sidecar, remedy, card.files.get(INT8_NAME))  # the file the sidecar was written for
    check_matches_card(out, sidecar, card, remedy, thresholds=False)  # its thresholds are the INT8 model's own
    try:  # types and ranges as the card's own: a threshold of 1.5 called every film normal, one of "0.3" a traceback
        checked_card(sidecar_path, int8_card(card, sidecar))
    except ValueError as e:
        raise ValueError(f"{e}; {remedy}") from None
    if [sidecar.get("threshold"), sidecar.get("tta_threshold")] != [chosen.threshold, chosen.tta_threshold]:
        raise ValueError(f"{sidecar_path} gives other thresholds under threshold and tta_threshold than its INT8 ones "
                         "(an export by an earlier pneumoscan, which put the FP32 ones there): a reader of the sidecar "
                         f"would label INT8 scores at the FP32 thresholds; {remedy}")
    return sidecar
