//! Helpers for the tests of `BesenderTokenSource` against scripted servers.

use besender_auth::{BesenderError, BesenderTokenSource, Token, TokenSource};

use super::{Reply, ScriptedServer};

pub const SECRET: &str = "cAREfCzucJ8hSECRETSECRET";
pub const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIyIn0.c2lnbmF0dXJl";

pub fn ok_body(token_fields: &str) -> String {
    format!(
        r#"{{"code":200,"message":"success","data":{{"token":{{{token_fields}}},"userInfo":{{"id":2,"account":"test007","score":"461.74970"}}}}}}"#
    )
}

pub fn good_token_fields() -> String {
    format!(r#""token_type":"Bearer","expires_in":86400,"access_token":"{TOKEN}""#)
}

pub fn source(base: &str) -> BesenderTokenSource {
    super::besender_source(base, SECRET)
}

pub async fn fetch_from(reply: Reply) -> Result<Token, BesenderError> {
    let server = ScriptedServer::start(reply).await;
    source(&server.url()).fetch().await
}

pub async fn error_from(reply: Reply) -> BesenderError {
    let err = fetch_from(reply)
        .await
        .expect_err("the answer must be refused");
    assert_no_secrets(&format!("{err} {err:?}"));
    err
}

pub fn assert_no_secrets(text: &str) {
    assert!(!text.contains(SECRET), "client secret leaked: {text}");
    assert!(!text.contains(TOKEN), "access token leaked: {text}");
    assert!(!text.contains("c2lnbmF0dXJl"), "token part leaked: {text}");
}
