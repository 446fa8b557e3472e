//! Delivery signatures: GitHub's `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw
//! body>`, the same HMAC in a header of the sender's choosing (the `sha256=` prefix
//! optional), and bearer tokens. Every comparison is constant-time.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The header GitHub signs deliveries with.
pub const GITHUB_SIGNATURE_HEADER: &str = "X-Hub-Signature-256";

/// `sha256=<hex>` of `body` under `secret`, as GitHub sends it.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn check_hmac(secret: &[u8], body: &[u8], hex_digest: &str) -> Result<(), ()> {
    let given = hex::decode(hex_digest.trim()).map_err(|_| ())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&given).map_err(|_| ())
}

/// GitHub's signature: the header must be `sha256=<hex digest>` of the body.
pub fn verify_github(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), String> {
    let Some(header) = header else {
        return Err(format!(
            "missing {GITHUB_SIGNATURE_HEADER} header: the trigger has a secret, so deliveries must be signed with it"
        ));
    };
    let Some(hex_digest) = header.trim().strip_prefix("sha256=") else {
        return Err(format!(
            "{GITHUB_SIGNATURE_HEADER} must be `sha256=<hex digest>`"
        ));
    };
    check_hmac(secret, body, hex_digest).map_err(|()| {
        format!("the {GITHUB_SIGNATURE_HEADER} signature does not match the body: check that the webhook's secret is the trigger's secret")
    })
}

/// A generic sender's HMAC-SHA256 in `header_name`: hex, with or without `sha256=`.
pub fn verify_hmac(
    header_name: &str,
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), String> {
    let Some(header) = header else {
        return Err(format!(
            "missing {header_name} header: the trigger has a secret, so deliveries must carry the HMAC-SHA256 of the body in it"
        ));
    };
    let header = header.trim();
    let hex_digest = header.strip_prefix("sha256=").unwrap_or(header);
    check_hmac(secret, body, hex_digest).map_err(|()| {
        format!("the {header_name} signature does not match the body (expected the hex HMAC-SHA256 of the raw body under the trigger's secret, `sha256=` optional)")
    })
}

/// `Authorization: Bearer <token>`, compared in constant time.
pub fn verify_bearer(token: &str, authorization: Option<&str>) -> Result<(), String> {
    let Some(given) = authorization.map(str::trim).and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    }) else {
        return Err("missing `Authorization: Bearer <token>` header".into());
    };
    if bool::from(given.trim().as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err("the bearer token does not match".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    const EXPECTED: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn githubs_test_vector() {
        // The example in GitHub's documentation on validating webhook deliveries.
        assert_eq!(sign(SECRET, BODY), EXPECTED);
        assert_eq!(verify_github(SECRET, BODY, Some(EXPECTED)), Ok(()));
    }

    #[test]
    fn github_signatures_that_do_not_verify() {
        assert!(verify_github(SECRET, b"Hello, World?", Some(EXPECTED))
            .unwrap_err()
            .contains("does not match the body"));
        assert!(verify_github(b"another secret", BODY, Some(EXPECTED))
            .unwrap_err()
            .contains("does not match the body"));
        assert!(verify_github(SECRET, BODY, None)
            .unwrap_err()
            .starts_with("missing X-Hub-Signature-256"));
        // GitHub's prefix is required; the hex must be hex.
        assert!(verify_github(SECRET, BODY, Some(&EXPECTED[7..]))
            .unwrap_err()
            .contains("sha256=<hex digest>"));
        assert!(verify_github(SECRET, BODY, Some("sha1=abc"))
            .unwrap_err()
            .contains("sha256=<hex digest>"));
        assert!(verify_github(SECRET, BODY, Some("sha256=zz"))
            .unwrap_err()
            .contains("does not match"));
        // A truncated digest never matches.
        assert!(verify_github(SECRET, BODY, Some(&EXPECTED[..20])).is_err());
    }

    #[test]
    fn generic_hmac_takes_the_prefix_or_not() {
        assert_eq!(
            verify_hmac("X-Signature", SECRET, BODY, Some(EXPECTED)),
            Ok(())
        );
        assert_eq!(
            verify_hmac("X-Signature", SECRET, BODY, Some(&EXPECTED[7..])),
            Ok(())
        );
        assert!(verify_hmac("X-Signature", SECRET, b"other", Some(EXPECTED))
            .unwrap_err()
            .starts_with("the X-Signature signature does not match"));
        assert!(verify_hmac("X-Signature", SECRET, BODY, None)
            .unwrap_err()
            .starts_with("missing X-Signature header"));
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(verify_bearer("t0k", Some("Bearer t0k")), Ok(()));
        assert_eq!(verify_bearer("t0k", Some("  Bearer t0k ")), Ok(()));
        assert!(verify_bearer("t0k", Some("Bearer t0"))
            .unwrap_err()
            .contains("does not match"));
        assert!(verify_bearer("t0k", Some("Basic dDBr"))
            .unwrap_err()
            .starts_with("missing"));
        assert!(verify_bearer("t0k", None)
            .unwrap_err()
            .starts_with("missing"));
    }

    #[test]
    fn a_trigger_checks_what_its_provider_and_auth_say() {
        use super::super::TriggerSpec;
        use serde_json::json;
        let github = TriggerSpec::from_spec(
            "trg_g",
            "g",
            &json!({"path": "/hooks/g", "workflow": "wf", "secret": "env:S"}),
        )
        .unwrap();
        let signed: &[(&str, &str)] = &[("x-hub-signature-256", EXPECTED)];
        let secret = std::str::from_utf8(SECRET).unwrap();
        assert_eq!(github.verify(Some(secret), None, signed, BODY), Ok(()));
        assert!(github.verify(Some("wrong"), None, signed, BODY).is_err());
        let unsigned: &[(&str, &str)] = &[];
        assert!(github.verify(Some(secret), None, unsigned, BODY).is_err());

        let generic = TriggerSpec::from_spec(
            "trg_h",
            "h",
            &json!({"path": "/hooks/h", "workflow": "wf", "provider": "generic",
                    "secret": "env:S", "signature_header": "X-Signature"}),
        )
        .unwrap();
        let signed: &[(&str, &str)] = &[("X-Signature", &EXPECTED[7..])];
        assert_eq!(generic.verify(Some(secret), None, signed, BODY), Ok(()));

        let bearer = TriggerSpec::from_spec(
            "trg_b",
            "b",
            &json!({"path": "/hooks/b", "workflow": "wf", "provider": "generic",
                    "secret": "env:S", "auth": "bearer"}),
        )
        .unwrap();
        let with_token: &[(&str, &str)] = &[("Authorization", "Bearer s3cret")];
        assert_eq!(
            bearer.verify(Some("s3cret"), None, with_token, BODY),
            Ok(())
        );
        let reason = bearer
            .verify(Some("other"), None, with_token, BODY)
            .unwrap_err();
        assert!(reason.contains("env:S"), "{reason}");
        assert!(
            !reason.contains("other"),
            "the secret is never shown: {reason}"
        );

        // No secret: refused unless it says insecure: true; the server's API token when set.
        let unsure =
            TriggerSpec::from_spec("trg_u", "u", &json!({"path": "/hooks/u", "workflow": "wf"}))
                .unwrap();
        assert!(unsure
            .verify(None, None, unsigned, BODY)
            .unwrap_err()
            .contains("insecure: true"));
        let open = TriggerSpec::from_spec(
            "trg_o",
            "o",
            &json!({"path": "/hooks/o", "workflow": "wf", "insecure": true}),
        )
        .unwrap();
        assert_eq!(open.verify(None, None, unsigned, BODY), Ok(()));
        assert!(open
            .verify(None, Some("api"), unsigned, BODY)
            .unwrap_err()
            .contains("API token"));
        let with_api_token: &[(&str, &str)] = &[("authorization", "Bearer api")];
        assert_eq!(open.verify(None, Some("api"), with_api_token, BODY), Ok(()));
    }
}
