"""``opsgate rehearse``: the seed's Phase 8 canary plan replayed on a compressed clock against the
sandboxes, through the real HTTP API, pipeline, controller and alerting (see docs/rehearsal.md)."""
