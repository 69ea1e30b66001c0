"""The HTTP service and web page: a FastAPI app that reads an uploaded X-ray, predicts, and optionally explains
with Grad-CAM.

Privacy: uploads are parsed in memory only (never spooled to disk), and nothing here logs a file name, the
image bytes or pixels. Robustness: every bad upload becomes a 4xx, and every refusal answers
``{"error": "...", "reason": "..."}`` (:data:`.limits.Refusal`, the word a client branches on); the body is capped
while it is read (Content-Length is not trusted), and the decompression-bomb guard lives in
:mod:`pneumoscan.data.decode`. Load: work is bounded (:class:`.limits.Limits`): a fixed number of decodes at once,
a bounded number of requests in the service (more get 503 with Retry-After), Grad-CAM in its own lane, deadlines
for request heads and bodies, and work for a client that has gone is dropped. Access (:class:`.guard.Access`): an
optional API key for all but the page, /healthz and the schema, a Host allow-list against DNS rebinding, no CORS
unless configured; see docs/deployment.md.

Modules, bottom to top: :mod:`.limits` (work bounds and refusals), :mod:`.guard` (access and security headers),
:mod:`.uploads` (reading and decoding an upload), :mod:`.formats` (response models, SR and FHIR answers),
:mod:`.metrics` (the Prometheus metrics, /metrics), :mod:`.batching` (the batching queue), :mod:`.audit` (the audit
log of readings and refusals, serve --audit-log), :mod:`.service` (a request's work and its lanes), :mod:`.app`
(the routes), :mod:`.server` (uvicorn).
"""
