//! The read cache, through HTTP on two nodes sharing one database — one in this process, one
//! a server process of its own: whatever a node caches, a committed write (on this node, on
//! the other, or straight into the database on SQLite) is seen by the next read; with Redis
//! as the shared second level, what one node read serves the other until a write moves it on.

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database};
use serde_json::{json, Value};

use crate::otlp_export::start_server;
use crate::support::{fresh_database, spawn_app_on, Running, TestApp};

async fn put(app: &TestApp, path: &str, body: Value) -> u16 {
    app.put_status(path, &body).await
}

fn patient(id: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]})
}

fn observation(id: &str, patient: &str, value: f64) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "performer": [{"reference": "Practitioner/dr-1"}],
        "valueQuantity": {"value": value, "unit": "mmol/L"}})
}

/// The `$everything` entries as `Type/id` → resource.
async fn everything(app: &TestApp, patient: &str) -> Vec<Value> {
    let (status, bundle) = app
        .get_json(&format!("/Patient/{patient}/$everything"))
        .await;
    assert_eq!(status, 200, "{bundle}");
    bundle["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e["resource"].clone())
        .collect()
}

fn find<'a>(entries: &'a [Value], t: &str, id: &str) -> Option<&'a Value> {
    entries
        .iter()
        .find(|r| r["resourceType"] == t && r["id"] == id)
}

async fn seed(app: &TestApp) {
    assert_eq!(
        put(
            app,
            "Practitioner/dr-1",
            json!({"resourceType": "Practitioner", "id": "dr-1", "name": [{"family": "Oldname"}]})
        )
        .await,
        201
    );
    assert_eq!(put(app, "Patient/p1", patient("p1", "Quill")).await, 201);
    assert_eq!(put(app, "Patient/p2", patient("p2", "Fenn")).await, 201);
    assert_eq!(
        put(app, "Observation/o1", observation("o1", "p1", 5.4)).await,
        201
    );
}

#[tokio::test]
async fn a_node_sees_its_own_writes_through_the_cache_at_once() {
    let (url, _database) = fresh_database().await;
    let app = spawn_app_on(&url, |_| {}).await;
    seed(&app).await;
    // Cached now (twice, so the second is a hit).
    for _ in 0..2 {
        let page = everything(&app, "p1").await;
        assert!(find(&page, "Observation", "o1").is_some());
    }
    // A new result for the patient.
    assert_eq!(
        put(&app, "Observation/o2", observation("o2", "p1", 6.1)).await,
        201
    );
    assert!(find(&everything(&app, "p1").await, "Observation", "o2").is_some());
    // A result moved to another patient leaves the first patient's page too.
    let _ = everything(&app, "p2").await;
    assert_eq!(
        put(&app, "Observation/o1", observation("o1", "p2", 5.4)).await,
        200
    );
    assert!(find(&everything(&app, "p1").await, "Observation", "o1").is_none());
    assert!(find(&everything(&app, "p2").await, "Observation", "o1").is_some());
    // A supporting resource, included in every page that refers to it.
    let renamed =
        json!({"resourceType": "Practitioner", "id": "dr-1", "name": [{"family": "Newname"}]});
    assert_eq!(put(&app, "Practitioner/dr-1", renamed).await, 200);
    let page = everything(&app, "p1").await;
    let practitioner = find(&page, "Practitioner", "dr-1").expect("included");
    assert_eq!(practitioner["name"][0]["family"], "Newname");
    // An absent resource, cached as absent, then created.
    assert_eq!(app.get("/Patient/p3").await.status(), 404);
    assert_eq!(app.get("/Patient/p3").await.status(), 404);
    assert_eq!(put(&app, "Patient/p3", patient("p3", "Late")).await, 201);
    assert_eq!(app.get("/Patient/p3").await.status(), 200);
    // A read, cached, then deleted.
    assert_eq!(app.get("/Patient/p2").await.status(), 200);
    let deleted = app
        .client
        .delete(format!("{}/Patient/p2", app.base))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    assert_eq!(app.get("/Patient/p2").await.status(), 410);
    app.stop().await;
}

/// A second node in a process of its own (the real binary) on the database at `url`, with
/// `env` besides; killed when the returned guard drops.
fn node_process(url: &str, env: &[(&str, &str)]) -> (TestApp, Running, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("hl7bridge-node-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut all = vec![("HL7BRIDGE_DATABASE_URL", url)];
    all.extend_from_slice(env);
    let (child, http, mllp) = tokio::task::block_in_place(|| start_server(&dir, &all));
    (TestApp::of_process(&http, &mllp), Running(child), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sees_another_nodes_writes_and_direct_database_writes() {
    let (url, _database) = fresh_database().await;
    let a = spawn_app_on(&url, |_| {}).await;
    // Node b is another server process on the same database.
    let (b, _b_process, b_dir) = node_process(&url, &[]);
    seed(&a).await;
    let _ = everything(&b, "p1").await;
    let _ = everything(&b, "p1").await;
    assert_eq!(b.get("/Patient/p1").await.status(), 200);

    assert_eq!(
        put(&a, "Observation/o2", observation("o2", "p1", 6.1)).await,
        201
    );
    assert_eq!(put(&a, "Patient/p1", patient("p1", "Renamed")).await, 200);
    // SQLite: at once (the data version moved). PostgreSQL: when the notification arrives,
    // a few milliseconds after the commit.
    let sqlite = !url.starts_with("postgres");
    let deadline = Instant::now() + Duration::from_secs(if sqlite { 0 } else { 3 });
    loop {
        let page = everything(&b, "p1").await;
        let (_, read) = b.get_json("/Patient/p1").await;
        let fresh =
            find(&page, "Observation", "o2").is_some() && read["name"][0]["family"] == "Renamed";
        if fresh {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node b still serves what node a replaced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A write straight into the database, behind both nodes' backs.
    let db = Database::connect(&url).await.unwrap();
    db.execute_unprepared(
        "UPDATE resource SET content = replace(content, 'Renamed', 'Direct') WHERE resource_type = 'Patient' AND id = 'p1'",
    )
    .await
    .unwrap();
    let (_, read) = b.get_json("/Patient/p1").await;
    if sqlite {
        // Any commit moves SQLite's data version: the cache lets go.
        assert_eq!(read["name"][0]["family"], "Direct");
    } else {
        // PostgreSQL learns of changes from the nodes' notifications only; a write that
        // bypasses hl7bridge is not seen until something invalidates it. This proves the
        // read came from the cache.
        assert_eq!(read["name"][0]["family"], "Renamed");
    }
    a.stop().await;
    let _ = std::fs::remove_dir_all(b_dir);
}

/// `$everything` lookups of kind `result` counted by the server at `http` (its own process).
async fn everything_lookups(client: &reqwest::Client, http: &str, result: &str) -> u64 {
    let text = client
        .get(format!("http://{http}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series =
        format!("hl7bridge_read_cache_lookups_total{{kind=\"everything\",result=\"{result}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// An empty `$everything` page (a `_since` after everything, a `_type` the patient has none
/// of) holds no resource text, but its entry still costs memory: distinct empty pages must
/// be evicted like any other, or a client can grow the cache without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_everything_pages_count_against_the_cache_limit() {
    let dir = std::env::temp_dir().join(format!("hl7bridge-cache-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("cache.db").display());
    let env = [
        ("HL7BRIDGE_DATABASE_URL", url.as_str()),
        ("HL7BRIDGE_READ_CACHE_MAX_BYTES", "4096"),
    ];
    let (child, http, _) = tokio::task::block_in_place(|| start_server(&dir, &env));
    let _running = Running(child);
    let client = crate::support::http_client();
    let status = client
        .put(format!("http://{http}/Patient/pe"))
        .header("content-type", "application/fhir+json")
        .body(patient("pe", "Empty").to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 201);
    let since = |n: usize| format!("2090-01-01T00:00:00.{n:03}Z");
    for n in 0..500 {
        let url = format!("http://{http}/Patient/pe/$everything?_since={}", since(n));
        let bundle: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        assert!(
            bundle["entry"].as_array().is_none_or(|e| e.is_empty()),
            "{bundle}"
        );
    }
    let hits = everything_lookups(&client, &http, "hit").await;
    // 500 entries cannot fit in 4096 bytes: the first page has long been evicted.
    let url = format!("http://{http}/Patient/pe/$everything?_since={}", since(0));
    assert_eq!(client.get(url).send().await.unwrap().status(), 200);
    assert_eq!(
        everything_lookups(&client, &http, "hit").await,
        hits,
        "the first of 500 distinct empty pages is still cached under a 4096-byte limit"
    );
    drop(_running);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Redis the shared-cache tests use: `HL7BRIDGE_TEST_REDIS_URL`, else the local one. None
/// (the test skips, saying so) when it does not answer, except under CI, which provides it.
async fn test_redis() -> Option<String> {
    let url = std::env::var("HL7BRIDGE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let answers = async {
        let mut conn = redis::Client::open(url.as_str())
            .ok()?
            .get_multiplexed_async_connection()
            .await
            .ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    let up = tokio::time::timeout(Duration::from_secs(2), answers)
        .await
        .ok()
        .flatten()
        .is_some();
    if !up {
        assert!(
            std::env::var("CI").is_err(),
            "CI must provide Redis at {url} (.ci/run starts it)"
        );
        eprintln!("skipped: no Redis answers at {url}");
        return None;
    }
    Some(url)
}

/// Two nodes on one database, sharing one Redis under a prefix of this test's own: `a` in
/// this process, `b` a server process of its own (killed when the guard drops).
async fn nodes_sharing_redis(url: &str, redis: &str) -> (TestApp, TestApp, Running) {
    let prefix = format!("hl7bridge-test:{}:", uuid::Uuid::new_v4().simple());
    nodes_sharing_redis_under(url, redis, &prefix).await
}

async fn nodes_sharing_redis_under(
    url: &str,
    redis: &str,
    prefix: &str,
) -> (TestApp, TestApp, Running) {
    let a = spawn_app_on(url, |config| {
        config.redis_url = Some(redis.to_string());
        config.redis_prefix = Some(prefix.to_string());
    })
    .await;
    let env = [
        ("HL7BRIDGE_REDIS_URL", redis),
        ("HL7BRIDGE_REDIS_PREFIX", prefix),
    ];
    let (b, process, dir) = node_process(url, &env);
    let _ = std::fs::remove_dir_all(dir);
    (a, b, process)
}

/// Changes a stored Patient's family name behind every node's back (plain SQL): no
/// notification, no generation bump. A node that still answers with the old name served it
/// from a cache.
async fn rename_directly(url: &str, from: &str, to: &str) {
    let db = Database::connect(url).await.unwrap();
    db.execute_unprepared(&format!(
        "UPDATE resource SET content = replace(content, '{from}', '{to}') \
         WHERE resource_type = 'Patient' AND id = 'p1'"
    ))
    .await
    .unwrap();
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_served_from_redis_what_another_node_read_until_a_write_moves_it_on() {
    let Some(redis) = test_redis().await else {
        return;
    };
    let (url, _database) = fresh_database().await;
    let (a, b, _b_process) = nodes_sharing_redis(&url, &redis).await;
    seed(&a).await;
    // Node a reads from the database and leaves both answers in Redis (in the background).
    let (_, read) = a.get_json("/Patient/p1").await;
    assert_eq!(read["name"][0]["family"], "Quill");
    assert!(find(&everything(&a, "p1").await, "Observation", "o1").is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;

    rename_directly(&url, "Quill", "Behind").await;
    // Node b has never read either, and its own cache is empty (on SQLite the direct write
    // emptied it besides): the old name can only come from Redis.
    let (_, read) = b.get_json("/Patient/p1").await;
    assert_eq!(read["name"][0]["family"], "Quill", "served from Redis");
    let page = everything(&b, "p1").await;
    let listed = find(&page, "Patient", "p1").expect("the patient");
    assert_eq!(listed["name"][0]["family"], "Quill", "the page from Redis");

    // A write through node a moves the generations on before a is answered: node b reads the
    // database again at once, and sees the write and the direct change under it.
    assert_eq!(
        put(&a, "Observation/o2", observation("o2", "p1", 6.1)).await,
        201
    );
    let page = everything(&b, "p1").await;
    assert!(
        find(&page, "Observation", "o2").is_some(),
        "b saw a's write"
    );
    assert_eq!(
        find(&page, "Patient", "p1").unwrap()["name"][0]["family"],
        "Behind"
    );
    assert_eq!(put(&a, "Patient/p1", patient("p1", "Written")).await, 200);
    let (_, read) = b.get_json("/Patient/p1").await;
    assert_eq!(read["name"][0]["family"], "Written");
    // A supporting resource moves every page on.
    let renamed =
        json!({"resourceType": "Practitioner", "id": "dr-1", "name": [{"family": "Newname"}]});
    assert_eq!(put(&b, "Practitioner/dr-1", renamed).await, 200);
    let page = everything(&a, "p1").await;
    let practitioner = find(&page, "Practitioner", "dr-1").expect("included");
    assert_eq!(practitioner["name"][0]["family"], "Newname");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_does_not_answer_costs_nothing_but_its_cache() {
    // A port nothing listens on: connections are refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let redis = format!("redis://127.0.0.1:{port}");
    let (url, _database) = fresh_database().await;
    let (a, b, _b_process) = nodes_sharing_redis(&url, &redis).await;
    let started = Instant::now();
    seed(&a).await;
    for _ in 0..3 {
        assert!(find(&everything(&b, "p1").await, "Observation", "o1").is_some());
        assert_eq!(b.get("/Patient/p1").await.status(), 200);
    }
    assert_eq!(put(&b, "Patient/p1", patient("p1", "Later")).await, 200);
    let (_, read) = a.get_json("/Patient/p1").await;
    assert_eq!(read["name"][0]["family"], "Later");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a dead Redis slowed the server: {:?}",
        started.elapsed()
    );
    a.stop().await;
}

async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Node a reads patient p1 (leaving it in Redis), the database changes behind every node's
/// back, and node b (which never read it) reads: whether b's answer came from Redis.
async fn b_is_served_from_redis(url: &str, a: &TestApp, b: &TestApp) -> bool {
    let (_, read) = a.get_json("/Patient/p1").await;
    assert_eq!(read["name"][0]["family"], "Quill");
    tokio::time::sleep(Duration::from_millis(200)).await;
    rename_directly(url, "Quill", "Behind").await;
    let (_, read) = b.get_json("/Patient/p1").await;
    read["name"][0]["family"] == "Quill"
}

/// A generation counter overwritten with something that is not a number (by another program)
/// is moved to a fresh generation by the next write, and the level keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_counter_holding_junk_is_moved_on_and_the_level_stays_on() {
    let Some(redis) = test_redis().await else {
        return;
    };
    let prefix = format!("hl7bridge-test:{}:", uuid::Uuid::new_v4().simple());
    let mut conn = redis_connection(&redis).await;
    let counter = format!("{prefix}g:r:Patient/p1");
    let _: () = redis::cmd("SET")
        .arg(&counter)
        .arg("junk")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (url, _database) = fresh_database().await;
    let (a, b, _b_process) = nodes_sharing_redis_under(&url, &redis, &prefix).await;
    seed(&a).await;
    let now: String = redis::cmd("GET")
        .arg(&counter)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        now.parse::<i64>().is_ok_and(|n| n > 1_000_000),
        "moved to a fresh generation: {now}"
    );
    assert!(
        b_is_served_from_redis(&url, &a, &b).await,
        "the level is still on"
    );
    a.stop().await;
}

/// A Redis of its own on a free loopback port, with `maxmemory-policy` `policy`. None (the
/// test skips, saying so) without `redis-server`, except under CI.
fn private_redis(policy: &str) -> Option<(String, Running)> {
    if !crate::support::tool_present("redis-server", &["--version"], "redis-server") {
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--maxmemory", "64mb", "--maxmemory-policy", policy])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((format!("redis://127.0.0.1:{port}"), running))
}

/// Under an `allkeys-*` policy Redis could evict a generation counter and bring stale values
/// back, so the level is never used; the same Redis switched to `volatile-lru` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_may_evict_any_key_is_not_used() {
    let Some((redis, _redis_process)) = private_redis("allkeys-lru") else {
        return;
    };
    let (url, _database) = fresh_database().await;
    let (a, b, _b_process) = nodes_sharing_redis(&url, &redis).await;
    seed(&a).await;
    assert!(
        !b_is_served_from_redis(&url, &a, &b).await,
        "allkeys-lru: not used"
    );
    let mut conn = redis_connection(&redis).await;
    // Writes still move the generation counters on (a node that found the policy changed
    // would need them), but no value is stored.
    let values: Vec<String> = redis::cmd("KEYS")
        .arg("*:v:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(values.is_empty(), "no value stored: {values:?}");
    a.stop().await;
    drop(b);

    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("volatile-lru")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (url, _database) = fresh_database().await;
    let (a, b, _b_process) = nodes_sharing_redis(&url, &redis).await;
    seed(&a).await;
    assert!(
        b_is_served_from_redis(&url, &a, &b).await,
        "volatile-lru: used"
    );
    a.stop().await;
}
