//! The ecosystem's checkers against a live server: promtool on `/metrics`, openapi-spec-validator and schemathesis on the API, Alertmanager's fingerprint, HEAD answered like GET.
