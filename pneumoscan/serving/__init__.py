"""The HTTP service and web page: access and load limits, the upload handling, the batching queue, the response
formats, the routes and the server."""
