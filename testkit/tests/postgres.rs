#![allow(clippy::unwrap_used)]

use switchboard_testkit::Postgres;

#[test]
fn committed_rows_survive_kill9_and_stop() {
    let mut pg = Postgres::start().unwrap();
    let url = pg.create_database("t1").unwrap();
    assert!(url.ends_with("/t1"), "{url}");
    pg.psql(
        "t1",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)",
    )
    .unwrap();
    pg.kill9();
    assert!(!pg.is_running());
    assert!(pg.psql("t1", "SELECT 1").is_err());
    pg.restart().unwrap();
    assert_eq!(pg.psql("t1", "SELECT sum(x) FROM t").unwrap(), "3");
    pg.stop();
    pg.restart().unwrap();
    assert_eq!(pg.psql("t1", "SELECT count(*) FROM t").unwrap(), "2");
}

#[test]
fn bad_sql_is_a_clear_error() {
    let pg = Postgres::start().unwrap();
    let err = pg.psql("postgres", "SELEC 1").unwrap_err().to_string();
    assert!(err.contains("syntax error"), "{err}");
}
