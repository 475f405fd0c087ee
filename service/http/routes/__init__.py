"""One module per resource of the HTTP API (contract section 3)."""
