//! `nereid admin image sources|avail|import-remote`: the IMGAPIs this cloud imports images
//! from (`/image_sources`), what they offer (`imgadm avail`), and AdminImportRemoteImage
//! (`POST /images/UUID?action=import-remote`) with a progress bar fed by
//! `GET /image_imports/UUID` while the headnode downloads.

use std::time::Duration;

use anyhow::Result;
use nereid_client::{Client, enc};
use serde_json::{Value, json};

use crate::cli::{AvailArgs, ImportRemoteArgs, SourcesVerb};
use crate::output::{self, Column, text};
use crate::progress::Progress;

const SOURCE_COLUMNS: &[Column] = &[Column { header: "URL", get: |v| text(v, "url") }, Column { header: "TYPE", get: |v| text(v, "type") }];

/// `imgadm avail`'s columns: UUID NAME VERSION OS TYPE PUB (the publication date).
const AVAIL_COLUMNS: &[Column] = &[
    Column { header: "UUID", get: |v| text(&v["manifest"], "uuid") },
    Column { header: "NAME", get: |v| text(&v["manifest"], "name") },
    Column { header: "VERSION", get: |v| text(&v["manifest"], "version") },
    Column { header: "OS", get: |v| text(&v["manifest"], "os") },
    Column { header: "TYPE", get: |v| text(&v["manifest"], "type") },
    Column { header: "PUB", get: |v| text(&v["manifest"], "published_at").chars().take(10).collect() },
];

fn print(v: &Value, columns: &[Column], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        output::table(columns, v.as_array().map(Vec::as_slice).unwrap_or(&[]));
    }
}

pub async fn sources(c: &Client, v: SourcesVerb, json: bool) -> Result<()> {
    match v {
        SourcesVerb::List => print(&c.get("/image_sources").await?, SOURCE_COLUMNS, json),
        SourcesVerb::Add { url } => {
            let rec = c.post("/image_sources", &json!({"url": url})).await?;
            if json {
                output::object(&rec, true);
            } else {
                println!("image source {} (imgapi)", text(&rec, "url"));
            }
        }
        SourcesVerb::Remove { url } => {
            c.delete(&format!("/image_sources?url={}", enc(&url))).await?;
            if !json {
                println!("removed image source {url}");
            }
        }
    }
    Ok(())
}

pub async fn avail(c: &Client, a: AvailArgs, json: bool) -> Result<()> {
    let path = match &a.source {
        Some(s) => format!("/image_sources/images?source={}", enc(s)),
        None => "/image_sources/images".to_string(),
    };
    let listed = c.get(&path).await?;
    if json {
        print(&listed, AVAIL_COLUMNS, true);
        return Ok(());
    }
    // A source that could not be read is a warning, as `imgadm avail` gives it; the
    // others' images are listed.
    let (failed, images): (Vec<Value>, Vec<Value>) =
        listed.as_array().cloned().unwrap_or_default().into_iter().partition(|i| i.get("error").is_some());
    for f in &failed {
        eprintln!("warning: image source {} could not be listed: {}", text(f, "source"), f["error"]["message"].as_str().unwrap_or(""));
    }
    print(&Value::Array(images), AVAIL_COLUMNS, false);
    Ok(())
}

/// Imports and, meanwhile, shows the headnode's download progress.
pub async fn import_remote(c: &Client, a: ImportRemoteArgs, json: bool) -> Result<()> {
    let mut path = format!("/images/{}?action=import-remote", enc(&a.uuid));
    if let Some(s) = &a.source {
        path.push_str(&format!("&source={}", enc(s)));
    }
    let import = {
        let c = c.clone();
        tokio::spawn(async move { c.post(&path, &json!({})).await })
    };
    let status = format!("/image_imports/{}", enc(&a.uuid));
    let mut bar: Option<(String, Progress)> = None;
    let outcome = loop {
        if import.is_finished() {
            break import.await?;
        }
        if let Ok(rec) = c.get(&status).await
            && rec["state"] == "running"
            && let Some(current) = rec["current"].as_str()
        {
            if bar.as_ref().is_none_or(|(id, _)| id != current) {
                if let Some((_, b)) = bar.take() {
                    b.finish();
                }
                let size = rec["size"].as_u64().unwrap_or(0);
                bar = Some((current.to_string(), Progress::bytes(size, &format!("importing {current}"))));
            }
            if let Some((_, b)) = &bar {
                b.set(rec["downloaded"].as_u64().unwrap_or(0));
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    if let Some((_, b)) = bar.take() {
        b.finish();
    }
    let outcome = outcome?;
    if json {
        output::object(&outcome, true);
        return Ok(());
    }
    let imported: Vec<&str> = outcome["imported"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    for id in &imported {
        let what = if *id == a.uuid { "image" } else { "origin" };
        println!("imported {what} {id} from {}", text(&outcome, "source"));
    }
    Ok(())
}
