//! The operator's dashboard, servers and jobs pages in a real headless Chromium: the sim
//! cloud's servers with their capacity and (given a fixture hwmon directory) temperatures;
//! a server's VMs; reserving a server from its page (and a bad traits form named and
//! kept); a provision whose job page shows placement's reason for each server it refused,
//! refreshing while it runs; a failed provision on the dashboard, with its failed step and
//! its undo steps; the jobs list's filters.
//! Screenshots of each step go to target/test-artifacts/screenshots/web_operator/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nereid_testkit::webdriver::{Browser, wait_until};
use nereid_testkit::{Backend, Cloud, Options, web::PASSWORD};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

async fn page_text(b: &Browser) -> String {
    let body = b.find("main").await.unwrap();
    b.text(&body).await.unwrap()
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_servers_capacity_vms_jobs_and_why_placement_refused_servers() {
    let mut o = Options { sim_servers: 2, ..Options::new(Backend::Sqlite) }.web_https();
    // Long enough to see a provision's job page while it runs.
    o.sim_delays.create = Duration::from_secs(3);
    let cloud = Cloud::start_with(o).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    cloud.web_account("opal", true).await.unwrap();
    let servers = cloud.wait_servers(2).await.unwrap();
    let base = cloud.web_url().unwrap();
    let b = Browser::start("web_operator", 1280).await.unwrap();
    b.sign_in(&base, "opal", PASSWORD).await.unwrap();
    b.wait_text("Sign out", LIMIT).await.unwrap();

    // The dashboard names every server, with its status and capacity.
    b.goto(&format!("{base}/dashboard")).await.unwrap();
    let t = page_text(&b).await;
    b.screenshot("01-dashboard").await.unwrap();
    for srv in &servers {
        assert!(t.contains(&s(srv, "hostname")) && t.contains(&s(srv, "uuid")), "dashboard names {srv}:\n{t}");
    }
    assert!(t.contains("2 server(s): 2 running"), "{t}");
    assert!(t.contains("RAM: 0 MiB used") && t.contains("free of"), "capacity used and free:\n{t}");
    assert!(t.contains("not reported"), "simulated servers have no sensors:\n{t}");

    // One simulated server given sensors (a fixture hwmon directory): the dashboard shows
    // its hottest reading with its label, its page every reading; the other stays "not reported".
    let hwmon = tempfile::tempdir().unwrap();
    let chip = hwmon.path().join("hwmon0");
    std::fs::create_dir_all(&chip).unwrap();
    for (f, v) in [
        ("name", "coretemp"),
        ("temp1_input", "45000"),
        ("temp1_label", "Package id 0"),
        ("temp2_input", "41000"),
        ("temp2_label", "Core 0"),
    ] {
        std::fs::write(chip.join(f), format!("{v}\n")).unwrap();
    }
    let agent = cloud.agent.as_ref().unwrap();
    agent.nodes[0].set_hwmon(Some(hwmon.path().to_path_buf()));
    let hot = agent.nodes[0].uuid.to_string();
    let server = async || Ok(cloud.client.get(&format!("/servers/{hot}")).await?);
    let both = |srv: &Value| srv["temperatures"].as_array().is_some_and(|t| t.len() >= 2);
    wait_until(LIMIT, "the server's temperatures to reach the API", server, both).await.unwrap();
    b.goto(&format!("{base}/dashboard")).await.unwrap();
    let t = page_text(&b).await;
    b.screenshot("01b-dashboard-temperatures").await.unwrap();
    assert!(t.contains("Package id 0 (coretemp): 45.0 °C (hottest of 2)") && !t.contains("Core 0"), "the hottest reading:\n{t}");
    assert!(t.contains("not reported"), "the other server has none:\n{t}");
    b.goto(&format!("{base}/servers/{hot}")).await.unwrap();
    let t = page_text(&b).await;
    assert!(t.contains("Package id 0 (coretemp): 45.0 °C") && t.contains("Core 0 (coretemp): 41.0 °C") && t.contains("read at"), "{t}");

    // A VM made through the operator API shows on its server's page, linked.
    let (vm1, job1) = cloud.create_vm(&seed.vm_body("web-op-1")).await.unwrap();
    assert_eq!(cloud.wait_job(&job1).await.unwrap()["execution"], "succeeded");
    let vm1_rec = cloud.client.get(&format!("/vms/{vm1}")).await.unwrap();
    let home = s(&vm1_rec, "server_uuid");
    let other = servers.iter().map(|x| s(x, "uuid")).find(|u| *u != home).unwrap();
    let other_host = servers.iter().find(|x| s(x, "uuid") == other).map(|x| s(x, "hostname")).unwrap();

    b.goto(&format!("{base}/servers")).await.unwrap();
    let t = page_text(&b).await;
    b.screenshot("02-servers").await.unwrap();
    for srv in &servers {
        assert!(t.contains(&s(srv, "hostname")) && t.contains(&s(srv, "uuid")), "servers list names {srv}:\n{t}");
    }
    assert!(t.contains("RAM: 1.0 GiB used"), "the VM's 1 GiB counts on its server:\n{t}");

    b.click_on(&format!("a[href='/servers/{home}']")).await.unwrap();
    b.wait_text("Sysinfo", LIMIT).await.unwrap();
    b.screenshot("03-server-with-vm").await.unwrap();
    let link = b.find(&format!("a[href='/vms/{vm1}']")).await.unwrap();
    assert_eq!(b.text(&link).await.unwrap(), vm1);
    let t = page_text(&b).await;
    assert!(t.contains("web-op-1") && t.contains("1 active VM record(s) on this server"), "{t}");

    // Reserving the other server from its page; a traits form that is not JSON is refused,
    // naming the field and keeping what was typed.
    b.goto(&format!("{base}/servers/{other}")).await.unwrap();
    b.click_on("#reserved").await.unwrap();
    b.click_on("form[action$='/settings'] button[type=submit]").await.unwrap();
    let settings = format!("/servers/{other}#settings");
    b.wait_until(LIMIT, "the server's page again", async || b.url().await, |u| u.ends_with(&settings)).await.unwrap();
    b.wait_text("Sysinfo", LIMIT).await.unwrap();
    assert_eq!(cloud.client.get(&format!("/servers/{other}")).await.unwrap()["reserved"], true);
    b.screenshot("04-server-reserved").await.unwrap();

    b.fill("#traits-json", "{ssd: yes").await.unwrap();
    b.click_on("form[action$='/traits'] button[type=submit]").await.unwrap();
    let t = b.wait_text("ValidationFailed", LIMIT).await.unwrap();
    assert!(t.contains("traits: is not JSON"), "the error names the field:\n{t}");
    let kept = b.execute("return document.getElementById('traits-json').value;", vec![]).await.unwrap();
    assert_eq!(kept, json!("{ssd: yes"), "what was typed is kept");
    b.screenshot("05-traits-refused").await.unwrap();

    // A provision now goes to the home server; its job page, seen while it runs, moves on
    // by itself and names the reserved server with placement's reason.
    let (_vm2, job2) = cloud.create_vm(&seed.vm_body("web-op-2")).await.unwrap();
    b.goto(&format!("{base}/jobs/{job2}")).await.unwrap();
    b.screenshot("06-job-running").await.unwrap();
    let t = page_text(&b).await;
    assert!(t.contains("Steps") && t.contains("reserve"), "{t}");
    if !t.contains("succeeded") {
        b.execute("window.__web_operator_mark = 'kept'; return null;", vec![]).await.unwrap();
        b.wait_text_in("main", "succeeded", LIMIT).await.unwrap();
        let kept = b.execute("return window.__web_operator_mark || null;", vec![]).await.unwrap();
        assert_eq!(kept, json!("kept"), "the job page moved on without reloading");
    }
    let t = page_text(&b).await;
    b.screenshot("07-job-succeeded-with-placement").await.unwrap();
    assert!(t.contains("Servers refused, and why"), "{t}");
    assert!(t.contains(&other_host) && t.contains("server is reserved"), "the reserved server and why:\n{t}");
    b.find(&format!("section.placement a[href='/servers/{other}']")).await.unwrap();
    b.execute("document.getElementById('placement').scrollIntoView(); return null;", vec![]).await.unwrap();
    b.screenshot("07b-job-placement").await.unwrap();

    // A provision that fails on its server: the dashboard lists it among failed jobs; its
    // page shows the failed step, the undo steps and the error.
    let mut body = seed.vm_body("web-op-doomed");
    body["internal_metadata"] = json!({"nereid:sim_fault": "fail-create"});
    let (_vm3, job3) = cloud.create_vm(&body).await.unwrap();
    assert_eq!(cloud.wait_job(&job3).await.unwrap()["execution"], "failed");
    b.goto(&format!("{base}/dashboard")).await.unwrap();
    b.wait_text_in("[data-live='/dashboard/jobs']", &job3, LIMIT).await.unwrap();
    b.screenshot("08-dashboard-failed-job").await.unwrap();
    b.click_on(&format!("[data-live='/dashboard/jobs'] a[href='/jobs/{job3}']")).await.unwrap();
    let t = b.wait_text("The job failed", LIMIT).await.unwrap();
    b.screenshot("09-failed-job").await.unwrap();
    b.execute("document.getElementById('undo').scrollIntoView(); return null;", vec![]).await.unwrap();
    b.screenshot("09b-failed-job-undo").await.unwrap();
    assert!(t.contains("simulated failure creating the VM"), "the error:\n{t}");
    assert!(t.contains("Undo steps (onerror)") && t.contains("reservation released"), "the undo steps:\n{t}");

    // A placement no server can take is refused at once (409, every server named); no job
    // is made for it.
    let big = cloud
        .client
        .post(
            "/packages",
            &json!({"name": "huge", "version": "1.0.0", "max_physical_memory": 1_048_576, "quota": 10_240, "vcpus": 1, "brand": "bhyve"}),
        )
        .await
        .unwrap();
    let mut body = seed.vm_body("web-op-huge");
    body["billing_id"] = big["uuid"].clone();
    let e = cloud.create_vm(&body).await.unwrap_err().to_string();
    assert!(e.contains("NoAllocatableServersError") || e.contains("No compute resources"), "{e}");

    // The jobs list: its filter form finds the failed job, not the succeeded ones.
    b.goto(&format!("{base}/jobs")).await.unwrap();
    b.click_on("select#execution option[value='failed']").await.unwrap();
    b.click_on("form.filters button[type=submit]").await.unwrap();
    b.wait_text_in("main", "Jobs 1–1", LIMIT).await.unwrap();
    let t = page_text(&b).await;
    b.screenshot("10-jobs-failed").await.unwrap();
    assert!(t.contains(&job3) && !t.contains(&job1) && !t.contains(&job2), "{t}");
    assert!(b.url().await.unwrap().contains("execution=failed"));

    // Unknown objects answer the API's 404.
    b.goto(&format!("{base}/servers/6f1f7c84-0000-4000-8000-000000000000")).await.unwrap();
    assert!(page_text(&b).await.contains("ResourceNotFound"));
    b.goto(&format!("{base}/jobs/6f1f7c84-0000-4000-8000-000000000000")).await.unwrap();
    assert!(page_text(&b).await.contains("ResourceNotFound"));
    b.screenshot("11-unknown-job").await.unwrap();

    // At 400 px the pages still fit (tables scroll inside themselves).
    b.resize(400, 900).await.unwrap();
    for path in ["/dashboard", &format!("/servers/{home}"), &format!("/jobs/{job3}")] {
        b.goto(&format!("{base}{path}")).await.unwrap();
        let w = b.execute("return document.documentElement.scrollWidth <= window.innerWidth + 1;", vec![]).await.unwrap();
        assert_eq!(w, json!(true), "{path} fits in 400 px");
    }
    b.screenshot("12-narrow-job").await.unwrap();
}
