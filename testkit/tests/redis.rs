#![allow(clippy::unwrap_used)]

use switchboard_testkit::{RedisCluster, RedisServer, RedisServerOptions};

#[test]
fn standalone_survives_kill9_with_aof() {
    let mut r = RedisServer::start().unwrap();
    assert_eq!(r.command(&["PING"]).unwrap(), "PONG");
    assert_eq!(r.command(&["SET", "k", "v"]).unwrap(), "OK");
    r.kill9();
    assert!(!r.is_running());
    assert!(r.command(&["PING"]).is_err());
    r.restart().unwrap();
    assert_eq!(r.command(&["GET", "k"]).unwrap(), "v");
    r.stop();
    r.restart().unwrap();
    assert_eq!(r.command(&["GET", "k"]).unwrap(), "v");
}

#[test]
fn without_persistence_a_restart_loses_data() {
    let mut r = RedisServer::start_with(RedisServerOptions {
        persistence: false,
        ..Default::default()
    })
    .unwrap();
    r.command(&["SET", "k", "v"]).unwrap();
    r.kill9();
    r.restart().unwrap();
    assert_eq!(r.command(&["GET", "k"]).unwrap(), "");
}

#[test]
fn drop_stops_the_server_and_removes_its_dir() {
    let r = RedisServer::start().unwrap();
    let (addr, dir) = (r.addr(), r.data_dir().to_owned());
    drop(r);
    assert!(std::net::TcpStream::connect(addr).is_err());
    assert!(!dir.exists());
}

#[test]
fn cluster_forms_with_all_slots() {
    let c = RedisCluster::start(3, 1).unwrap();
    assert_eq!(c.nodes().len(), 6);
    for n in c.nodes() {
        let info = n.command(&["CLUSTER", "INFO"]).unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
    }
    let url = c.url();
    assert!(
        url.starts_with("redis-cluster://127.0.0.1:") && url.matches("node=").count() == 2,
        "{url}"
    );
}

#[test]
fn missing_binary_is_a_clear_error() {
    let err = switchboard_testkit::find_binary(
        "definitely-not-redis",
        "SB_TEST_NO_SUCH_VAR",
        "apt-get install -y x",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("definitely-not-redis not found") && err.contains("apt-get install"),
        "{err}"
    );
}
