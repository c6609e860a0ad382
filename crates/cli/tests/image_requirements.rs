//! An image's `requirements` (min_ram, max_ram, brand, bootrom, networks) refuse a VMAPI
//! CreateVm that does not meet them, with the exact error body an operator's tooling
//! reads, and nothing is written; a provision that meets them goes through. (The same
//! refusals through CloudAPI and the `triton` CLI are in `triton_images.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

/// An active public zvol image with these requirements.
async fn image_requiring(cloud: &Cloud, name: &str, requirements: Value) -> String {
    let c = &cloud.client;
    let id = c
        .post(
            "/images",
            &json!({"owner": "00000000-0000-0000-0000-000000000000", "name": name, "version": "1", "type": "zvol", "os": "linux",
                "public": true, "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host", "image_size": 1024,
                "requirements": requirements}),
        )
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    c.send(c.request(reqwest::Method::PUT, &format!("/images/{id}/file?compression=none")).body(vec![0u8; 4096])).await.unwrap();
    c.post(&format!("/images/{id}?action=activate"), &json!({})).await.unwrap();
    id
}

/// CreateVm's error: (status, code, message, errors as JSON).
async fn refused(cloud: &Cloud, body: &Value) -> (u16, String, String, Value) {
    let e = cloud.client.post("/vms", body).await.expect_err("the provision should be refused");
    let nereid_client::Error::Api { status, code, message, body, .. } = e else { panic!("{e}") };
    (status, code, message, body["errors"].clone())
}

async fn vm_count(cloud: &Cloud) -> usize {
    cloud.client.get("/vms").await.unwrap().as_array().unwrap().len()
}

async fn requirements_refuse_vmapi_provisions(backend: Backend) {
    let cloud = Cloud::start_with(nereid_testkit::Options { sim_servers: 1, ..nereid_testkit::Options::new(backend) }).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let with = |image: &str| {
        let mut b = seed.vm_body("req");
        b["image_uuid"] = json!(image);
        b
    };

    // min_ram: the 1 GiB package is too small.
    let img = image_requiring(&cloud, "big", json!({"min_ram": 2048})).await;
    let (status, code, message, errors) = refused(&cloud, &with(&img)).await;
    assert_eq!((status, code.as_str()), (409, "ValidationFailed"), "{message}");
    assert_eq!(
        errors,
        json!([{"field": "ram", "code": "Invalid",
            "message": "\"vm.ram\" (1024 MiB) is smaller than \"image.requirements.min_ram\" (2048 MiB) of image big@1"}])
    );
    // An explicit ram that meets it goes through.
    let mut ok = with(&img);
    ok["ram"] = json!(2048);
    let (vm, job) = cloud.create_vm(&ok).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    assert_eq!(cloud.client.get(&format!("/vms/{vm}")).await.unwrap()["ram"], 2048);
    let before = vm_count(&cloud).await;

    // max_ram.
    let img = image_requiring(&cloud, "small", json!({"max_ram": 512})).await;
    let (_, code, _, errors) = refused(&cloud, &with(&img)).await;
    assert_eq!(code, "ValidationFailed");
    assert_eq!(
        errors,
        json!([{"field": "ram", "code": "Invalid",
            "message": "\"vm.ram\" (1024 MiB) is larger than \"image.requirements.max_ram\" (512 MiB) of image small@1"}])
    );

    // brand: a kvm image cannot boot as bhyve (the package says bhyve).
    let img = image_requiring(&cloud, "kvm-only", json!({"brand": "kvm"})).await;
    let (_, _, _, errors) = refused(&cloud, &with(&img)).await;
    assert_eq!(
        errors,
        json!([{"field": "brand", "code": "Invalid",
            "message": "brand bhyve does not match \"image.requirements.brand\" (kvm) of image kvm-only@1"}])
    );

    // bootrom: a UEFI image refuses an explicit bios, and is given uefi when none is named.
    let img = image_requiring(&cloud, "uefi", json!({"brand": "bhyve", "bootrom": "uefi"})).await;
    let mut bios = with(&img);
    bios["bootrom"] = json!("bios");
    let (_, _, _, errors) = refused(&cloud, &bios).await;
    assert_eq!(
        errors,
        json!([{"field": "bootrom", "code": "Invalid",
            "message": "bootrom bios does not match \"image.requirements.bootrom\" (uefi) of image uefi@1"}])
    );
    let (vm, job) = cloud.create_vm(&with(&img)).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    assert_eq!(cloud.client.get(&format!("/vms/{vm}")).await.unwrap()["bootrom"], "uefi");
    let before = before + 1;

    // networks: two NICs needed, one given.
    let img = image_requiring(
        &cloud,
        "router",
        json!({"networks": [{"name": "net0", "description": "public"}, {"name": "net1", "description": "private"}]}),
    )
    .await;
    let (_, _, _, errors) = refused(&cloud, &with(&img)).await;
    assert_eq!(
        errors,
        json!([{"field": "networks", "code": "Invalid",
            "message": "image router@1 requires at least 2 network interface(s) (\"image.requirements.networks\": net0, net1); the request gives 1"}])
    );
    let mut two = with(&img);
    two["networks"] = json!([seed.network, seed.network]);
    let (vm, job) = cloud.create_vm(&two).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    assert_eq!(cloud.client.get(&format!("/vms/{vm}")).await.unwrap()["nics"].as_array().unwrap().len(), 2);
    let before = before + 1;

    // Several unmet rules are all named at once.
    let img = image_requiring(&cloud, "picky", json!({"min_ram": 4096, "brand": "kvm"})).await;
    let (_, _, _, errors) = refused(&cloud, &with(&img)).await;
    let fields: Vec<&str> = errors.as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["ram", "brand"]);

    // A refused provision wrote nothing: only the VMs that met the requirements exist.
    assert_eq!(vm_count(&cloud).await, before);
}

both_backends!(requirements_refuse_vmapi_provisions);
