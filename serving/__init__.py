"""Serving the champion generator: TorchServe handler, .mar packaging, local server, client."""
