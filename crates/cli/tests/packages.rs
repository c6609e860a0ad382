//! PAPI over HTTP: create, immutability, 405 on delete, filters, counts — on both stores.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;

both_backends!(package_lifecycle, package_filters_and_counts, cli_package_commands);

async fn package_lifecycle(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let c = &cloud.client;
    let p = c.post("/packages", &package("g1.small")).await.unwrap();
    let id = p["uuid"].as_str().unwrap().to_string();
    assert_eq!((p["active"].clone(), p["max_swap"].clone(), p["v"].clone()), (json!(true), json!(2048), json!(1)));
    assert_eq!(c.get(&format!("/packages/{id}")).await.unwrap(), p);

    // Immutable fields answer 409 and change nothing.
    let body = api_err(c.put(&format!("/packages/{id}"), &json!({"quota": 20480})).await, 409, "ValidationFailed");
    assert_eq!(body["message"], "Attempt to update immutables");
    assert_eq!(body["errors"][0]["field"], "quota");
    assert_eq!(c.get(&format!("/packages/{id}")).await.unwrap()["quota"], 10240);
    // ... unless forced.
    assert_eq!(c.put(&format!("/packages/{id}?force=true"), &json!({"quota": 20480})).await.unwrap()["quota"], 20480);
    // Mutable fields change; null removes.
    let u = c.put(&format!("/packages/{id}"), &json!({"active": false, "description": "old"})).await.unwrap();
    assert_eq!((u["active"].clone(), u["description"].clone()), (json!(false), json!("old")));
    let u = c.put(&format!("/packages/{id}"), &json!({"description": null})).await.unwrap();
    assert!(u.get("description").is_none());

    // Delete answers 405 unless forced.
    let body = api_err(c.delete(&format!("/packages/{id}")).await, 405, "BadMethod");
    assert!(body["message"].as_str().unwrap().starts_with("Packages cannot be deleted"));
    c.get(&format!("/packages/{id}")).await.unwrap();
    c.delete(&format!("/packages/{id}?force=true")).await.unwrap();
    api_err(c.get(&format!("/packages/{id}")).await, 404, "ResourceNotFound");

    // A quota that cannot hold the package's own disks is refused with a clear message.
    let body = api_err(
        c.post(
            "/packages",
            &json!({"name": "flex", "version": "1.0.0", "brand": "bhyve", "max_physical_memory": 1024, "quota": 10240, "flexible_disk": true, "disks": [{}, {"size": 20480}]}),
        )
        .await,
        409,
        "ValidationFailed",
    );
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("smaller than the 20481 MiB its disks need"), "{body}");
    // A given uuid is kept; a second create with it is a duplicate.
    let fixed = json!({"uuid": "7b2c8a30-49a4-4b8e-9d6e-3a3c0a7f3b21", "name": "fixed", "version": "1.0.0", "max_physical_memory": 512, "quota": 1024});
    c.post("/packages", &fixed).await.unwrap();
    assert_eq!(api_err(c.post("/packages", &fixed).await, 409, "ValidationFailed")["errors"][0]["code"], "Duplicate");
}

async fn package_filters_and_counts(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let c = &cloud.client;
    let owner = "5e3c9a1e-8f0d-4a43-9d8f-6c1e0a7f3b21";
    for (name, ram, owners) in [
        ("g1.small", 1024, None),
        ("g1.medium", 2048, None),
        ("g2.small", 1024, Some(owner)),
        ("g2.other", 512, Some("6e3c9a1e-8f0d-4a43-9d8f-6c1e0a7f3b21")),
    ] {
        let mut p = package(name);
        p["max_physical_memory"] = json!(ram);
        if let Some(o) = owners {
            p["owner_uuids"] = json!([o]);
        }
        c.post("/packages", &p).await.unwrap();
    }
    let names = |v: serde_json::Value| v.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(names(c.get("/packages?name=g1.*&sort=name").await.unwrap()), ["g1.medium", "g1.small"]);
    assert_eq!(names(c.get("/packages?max_physical_memory=1024&sort=name").await.unwrap()), ["g1.small", "g2.small"]);
    assert_eq!(names(c.get("/packages?name=%5B%22g1.small%22%2C%22g2.other%22%5D&sort=name").await.unwrap()), ["g1.small", "g2.other"]);
    assert_eq!(names(c.get(&format!("/packages?owner_uuids={owner}&sort=name")).await.unwrap()), ["g1.medium", "g1.small", "g2.small"]);
    let resp = c.request(reqwest::Method::GET, "/packages?limit=2&sort=name&order=DESC").send().await.unwrap();
    assert_eq!(resp.headers()["x-resource-count"], "4");
    let page: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(names(page), ["g2.small", "g2.other"]);
    // An owner_uuids mismatch on GET is a 404, as in PAPI.
    let other = names(c.get("/packages?name=g2.other").await.unwrap());
    assert_eq!(other.len(), 1);
    let id = c.get("/packages?name=g2.other").await.unwrap()[0]["uuid"].as_str().unwrap().to_string();
    api_err(c.get(&format!("/packages/{id}?owner_uuids={owner}")).await, 404, "ResourceNotFound");
    // Bad filter values name the parameter.
    let body = api_err(c.get("/packages?max_physical_memory=lots").await, 409, "ValidationFailed");
    assert_eq!(body["errors"][0]["field"], "max_physical_memory");
    let body = api_err(c.get("/packages?colour=red").await, 409, "ValidationFailed");
    assert_eq!(body["errors"][0]["field"], "colour");
}

async fn cli_package_commands(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let o = nereid_async(
        &cloud,
        &["admin", "package", "create", "name=g1.tiny", "version=1.0.0", "max_physical_memory=512", "quota=1024", "vcpus=2"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = nereid_async(&cloud, &["admin", "package", "list"]).await;
    let out = stdout(&o);
    assert!(out.starts_with("UUID"), "{out}");
    assert!(out.contains("g1.tiny") && out.contains("512"), "{out}");
    let o = nereid_async(&cloud, &["admin", "--json", "package", "list", "name=g1.tiny"]).await;
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = list[0]["uuid"].as_str().unwrap().to_string();
    let o = nereid_async(&cloud, &["admin", "package", "update", &id, "quota=2048"]).await;
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("Attempt to update immutables") && err.contains("quota"), "{err}");
    let o = nereid_async(&cloud, &["admin", "package", "update", &id, "quota=2048", "--force"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = nereid_async(&cloud, &["admin", "package", "delete", &id]).await;
    assert!(!o.status.success() && stderr(&o).contains("cannot be deleted"));
    let o = nereid_async(&cloud, &["admin", "package", "create", "name=x", "quota=lots"]).await;
    assert!(!o.status.success() && stderr(&o).contains("quota takes an integer"), "{}", stderr(&o));
}
