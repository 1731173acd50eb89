//! `datasets add` for every input kind, with files made here: the dtypes
//! pandas gives the result in the jail (recorded in meta.json), and bad
//! inputs refused with a message that says what to do, leaving nothing
//! behind (the registry folder the command created is gone again).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use common::{csv_agent, image, BIN};

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `datasets --datasets REG add ARGS…`
fn add(registry: &Path, args: &[&str]) -> Output {
    let mut all = vec!["datasets", "--datasets", registry.to_str().expect("utf-8")];
    all.push("add");
    all.extend_from_slice(args);
    csv_agent(&all)
}

/// A registry path that does not exist yet, in a fresh temporary folder.
fn new_registry() -> (tempfile::TempDir, PathBuf) {
    let dir = common::world_readable_dir();
    let registry = dir.path().join("new").join("registry");
    (dir, registry)
}

fn meta(registry: &Path, slug: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(registry.join(slug).join("meta.json")).expect("meta.json");
    serde_json::from_str(&text).expect("meta json")
}

fn dtypes(registry: &Path, slug: &str) -> std::collections::BTreeMap<String, String> {
    meta(registry, slug)["import"]["dtypes"]
        .as_array()
        .expect("dtypes recorded")
        .iter()
        .map(|p| {
            (
                p[0].as_str().expect("name").to_string(),
                p[1].as_str().expect("dtype").to_string(),
            )
        })
        .collect()
}

fn assert_added(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "{}", text(o));
}

/// Refused with exit 2, the message naming `hint`, and nothing left: the
/// registry the command would have created does not exist.
fn assert_refused(o: &Output, registry: &Path, hint: &str) {
    assert_eq!(o.status.code(), Some(2), "{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(hint), "expected `{hint}` in:\n{err}");
    // Not even the parent folder the command had to create.
    let created = registry.parent().expect("parent");
    assert!(
        !registry.exists() && !created.exists(),
        "left behind: {:?}",
        std::fs::read_dir(registry).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
}

fn is_datetime(dtype: &str) -> bool {
    dtype.starts_with("datetime64")
}

#[test]
fn delimited_text_plain_compressed_zipped_and_in_a_kaggle_style_folder() {
    let (dir, registry) = new_registry();
    // A Kaggle-style name: the slug is derived, underscore and all.
    let csv = dir.path().join("owner_sales-data.csv");
    std::fs::write(
        &csv,
        "id,region,amount,day\n1,north,2.5,2024-01-01\n2,,3.5,2024-01-02\n3,south,,2024-01-03\n",
    )
    .expect("csv");
    let o = add(&registry, &[csv.to_str().expect("utf-8")]);
    assert_added(&o);
    assert!(
        registry.join("owner-sales-data/data.csv").is_file(),
        "{}",
        text(&o)
    );
    let d = dtypes(&registry, "owner-sales-data");
    assert_eq!(d["id"], "int64");
    assert_eq!(d["amount"], "float64");
    // The same name again gets a unique slug.
    assert_added(&add(&registry, &[csv.to_str().expect("utf-8")]));
    assert!(registry.join("owner-sales-data-2").is_dir());

    // --typed: integers with gaps and ISO dates keep their types.
    let o = add(
        &registry,
        &[csv.to_str().expect("utf-8"), "--typed", "--slug", "typed"],
    );
    assert_added(&o);
    assert!(registry.join("typed/data.sqlite").is_file());
    let d = dtypes(&registry, "typed");
    assert_eq!(d["id"], "int64", "{d:?}");
    assert!(is_datetime(&d["day"]), "{d:?}");
    assert_eq!(d["amount"], "float64", "{d:?}");
    assert!(d["region"] == "str" || d["region"] == "object", "{d:?}");
    let gaps = dir.path().join("gaps.csv");
    std::fs::write(
        &gaps,
        "n;when\n1;2024-01-01 10:00:00\n;2024-01-02 11:00:00\n3;\n",
    )
    .expect("csv");
    assert_added(&add(&registry, &[gaps.to_str().expect("utf-8"), "--typed"]));
    let d = dtypes(&registry, "gaps");
    assert_eq!(d["n"], "Int64", "{d:?}");
    assert!(is_datetime(&d["when"]), "{d:?}");

    let tsv = dir.path().join("t.tsv");
    std::fs::write(&tsv, "a\tb\n1\tx\n2\ty\n").expect("tsv");
    assert_added(&add(&registry, &[tsv.to_str().expect("utf-8")]));
    let txt = dir.path().join("semi colons.txt");
    std::fs::write(&txt, "a;b;c\n1;2;3\n4;5;6\n").expect("txt");
    assert_added(&add(&registry, &[txt.to_str().expect("utf-8")]));
    assert_eq!(meta(&registry, "semi-colons")["columns"], 3);

    let gz = dir.path().join("g.csv.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(b"x,y\n1,2\n3,4\n").expect("gzip");
    std::fs::write(&gz, enc.finish().expect("gzip")).expect("gz");
    assert_added(&add(&registry, &[gz.to_str().expect("utf-8")]));
    assert_eq!(meta(&registry, "g")["import"]["via"][0], "gzip");

    let zip_one = dir.path().join("one.zip");
    write_zip(
        &zip_one,
        &[("folder/inside.csv", b"p,q\n1,2\n"), ("README.md", b"hi")],
    );
    assert_added(&add(&registry, &[zip_one.to_str().expect("utf-8")]));
    assert_eq!(
        meta(&registry, "one")["import"]["file"],
        "folder/inside.csv"
    );

    // A downloaded folder, named the Kaggle way.
    let folder = dir.path().join("someone_weather-data");
    std::fs::create_dir(&folder).expect("folder");
    std::fs::write(folder.join("weather.csv"), "t,v\n1,2\n").expect("csv");
    assert_added(&add(&registry, &[folder.to_str().expect("utf-8")]));
    assert!(registry.join("someone-weather-data").is_dir());

    // Regression: a slug longer than 20 characters broke the table's
    // columns; widths now come from the data.
    let long = "a-dataset-slug-much-longer-than-twenty-characters";
    assert_added(&add(
        &registry,
        &[tsv.to_str().expect("utf-8"), "--slug", long],
    ));
    let list = csv_agent(&[
        "datasets",
        "--datasets",
        registry.to_str().expect("utf-8"),
        "list",
    ]);
    let listed = String::from_utf8_lossy(&list.stdout).into_owned();
    let header = listed.lines().next().expect("header");
    let long_line = listed
        .lines()
        .find(|l| l.starts_with(long))
        .expect("long slug listed");
    assert!(long_line.starts_with(&format!("{long}  ")), "{listed}");
    // Every row's `format` column starts where the header's does.
    let at = header[..header.find("format").expect("format column")]
        .chars()
        .count();
    for line in listed.lines().skip(1) {
        let chars: Vec<char> = line.chars().collect();
        assert!(
            chars.get(at - 1) == Some(&' ') && chars.get(at).is_some_and(|c| *c != ' '),
            "misaligned row in:\n{listed}"
        );
    }

    // `datasets show` says what was imported and how.
    let show = csv_agent(&[
        "datasets",
        "--datasets",
        registry.to_str().expect("utf-8"),
        "show",
        "one",
    ]);
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        shown.contains("imported:") && shown.contains("zip") && shown.contains("pandas dtype"),
        "{shown}"
    );
}

#[test]
fn a_workbook_keeps_its_dates_and_integers_with_gaps() {
    let (dir, registry) = new_registry();
    let book = dir.path().join("Sales Book.xlsx");
    write_xlsx(&book);
    let o = add(&registry, &[book.to_str().expect("utf-8")]);
    assert_added(&o);
    let d = dtypes(&registry, "sales-book");
    assert_eq!(d["count"], "Int64", "{d:?}");
    assert!(is_datetime(&d["day"]), "{d:?}");
    assert_eq!(d["price"], "float64", "{d:?}");
    assert!(d["name"] == "str" || d["name"] == "object", "{d:?}");
    assert_eq!(meta(&registry, "sales-book")["import"]["sheet"], "People");
    // Another sheet by name.
    let o = add(
        &registry,
        &[
            book.to_str().expect("utf-8"),
            "--sheet",
            "Second",
            "--slug",
            "second",
        ],
    );
    assert_added(&o);
    assert_eq!(meta(&registry, "second")["rows"], 2);

    let (_d2, fresh) = new_registry();
    let o = add(&fresh, &[book.to_str().expect("utf-8"), "--sheet", "Empty"]);
    assert_refused(&o, &fresh, "is empty");
    let o = add(&fresh, &[book.to_str().expect("utf-8"), "--sheet", "Nope"]);
    assert_refused(&o, &fresh, "--sheet NAME");
    let corrupt = dir.path().join("broken.xlsx");
    std::fs::write(&corrupt, b"PK\x03\x04 this is not really a workbook").expect("write");
    let o = add(&fresh, &[corrupt.to_str().expect("utf-8")]);
    assert_refused(&o, &fresh, "save it again");
}

#[test]
fn parquet_json_lines_json_and_sqlite_keep_their_types() {
    let (dir, registry) = new_registry();
    let pq = dir.path().join("events.parquet");
    write_parquet(&pq);
    assert_added(&add(&registry, &[pq.to_str().expect("utf-8")]));
    let d = dtypes(&registry, "events");
    assert_eq!(d["id"], "int64", "{d:?}");
    assert_eq!(d["n"], "Int64", "{d:?}");
    assert!(is_datetime(&d["day"]), "{d:?}");
    assert!(is_datetime(&d["at"]), "{d:?}");
    assert_eq!(d["x"], "float64", "{d:?}");
    assert!(d["name"] == "str" || d["name"] == "object", "{d:?}");

    let jsonl = dir.path().join("rows.jsonl");
    std::fs::write(
        &jsonl,
        "{\"id\": 1, \"n\": 5, \"when\": \"2024-01-02\", \"ok\": true}\n{\"id\": 2, \"n\": null, \"when\": \"2024-01-03\", \"ok\": false}\n",
    )
    .expect("jsonl");
    assert_added(&add(&registry, &[jsonl.to_str().expect("utf-8")]));
    let d = dtypes(&registry, "rows");
    assert_eq!(d["n"], "Int64");
    assert!(is_datetime(&d["when"]));
    assert_eq!(d["ok"], "bool");
    let keys: Vec<&String> = d.keys().collect();
    assert_eq!(keys.len(), 4);

    let json = dir.path().join("array.json");
    std::fs::write(
        &json,
        "[{\"a\": 1.5, \"b\": \"x\"}, {\"a\": 2, \"b\": \"y\"}]",
    )
    .expect("json");
    assert_added(&add(&registry, &[json.to_str().expect("utf-8")]));
    assert_eq!(dtypes(&registry, "array")["a"], "float64");

    let db = dir.path().join("shop.db");
    {
        let conn = rusqlite::Connection::open(&db).expect("sqlite");
        conn.execute_batch(
            "CREATE TABLE orders (id INTEGER, qty INTEGER, placed TEXT, total REAL);
             INSERT INTO orders VALUES (1, 3, '2024-03-01 10:00:00', 9.5), (2, NULL, '2024-03-02 11:30:00', 3.0);
             CREATE TABLE customers (id INTEGER, name TEXT);
             INSERT INTO customers VALUES (1, 'ann');",
        )
        .expect("tables");
    }
    let (_d2, fresh) = new_registry();
    let o = add(&fresh, &[db.to_str().expect("utf-8")]);
    assert_refused(&o, &fresh, "--table NAME");
    let o = add(
        &registry,
        &[db.to_str().expect("utf-8"), "--table", "orders"],
    );
    assert_added(&o);
    let d = dtypes(&registry, "shop");
    assert_eq!(d["qty"], "Int64", "{d:?}");
    assert!(is_datetime(&d["placed"]), "{d:?}");
    assert_eq!(d["total"], "float64", "{d:?}");
    assert_eq!(meta(&registry, "shop")["import"]["table"], "orders");
}

#[test]
fn bad_inputs_are_refused_with_what_to_do_and_nothing_left() {
    let _ = image();
    let dir = common::world_readable_dir();
    let (_d, registry) = new_registry();
    let path = |name: &str| dir.path().join(name);

    let empty_db = path("none.sqlite");
    rusqlite::Connection::open(&empty_db)
        .expect("sqlite")
        .execute_batch("CREATE VIEW v AS SELECT 1 AS x;")
        .expect("view");
    assert_refused(
        &add(&registry, &[empty_db.to_str().expect("utf-8")]),
        &registry,
        "no tables",
    );

    let two = path("two.zip");
    write_zip(&two, &[("a.csv", b"x\n1\n"), ("b.csv", b"y\n2\n")]);
    assert_refused(
        &add(&registry, &[two.to_str().expect("utf-8")]),
        &registry,
        "--file NAME",
    );

    let none = path("docs.zip");
    write_zip(&none, &[("README.md", b"no data")]);
    assert_refused(
        &add(&registry, &[none.to_str().expect("utf-8")]),
        &registry,
        "no tabular file",
    );

    let empty = path("empty.csv");
    std::fs::write(&empty, "").expect("write");
    assert_refused(
        &add(&registry, &[empty.to_str().expect("utf-8")]),
        &registry,
        "is empty",
    );

    let header_only = path("header.csv");
    std::fs::write(&header_only, "a,b\n").expect("write");
    assert_refused(
        &add(&registry, &[header_only.to_str().expect("utf-8")]),
        &registry,
        "no data rows",
    );

    let binary = path("blob.csv");
    std::fs::write(&binary, b"a,b\n\x00\x01\x02\n").expect("write");
    assert_refused(
        &add(&registry, &[binary.to_str().expect("utf-8")]),
        &registry,
        "NUL bytes",
    );

    let odd = path("slides.pptx");
    std::fs::write(&odd, b"x").expect("write");
    assert_refused(
        &add(&registry, &[odd.to_str().expect("utf-8")]),
        &registry,
        "export other formats to CSV",
    );

    let bad_json = path("bad.jsonl");
    std::fs::write(&bad_json, "{\"a\": 1}\n[1, 2]\n").expect("write");
    assert_refused(
        &add(&registry, &[bad_json.to_str().expect("utf-8")]),
        &registry,
        "line 2",
    );

    let csv = path("fine.csv");
    std::fs::write(&csv, "a\n1\n").expect("write");
    assert_refused(
        &add(&registry, &[csv.to_str().expect("utf-8"), "--sheet", "x"]),
        &registry,
        "--sheet applies to",
    );
    assert_refused(
        &add(
            &registry,
            &[csv.to_str().expect("utf-8"), "--slug", "Bad_Slug"],
        ),
        &registry,
        "--slug bad-slug",
    );

    // Kaggle without credentials: said before anything is created.
    let home = tempfile::tempdir().expect("home");
    let o = Command::new(BIN)
        .args([
            "datasets",
            "--datasets",
            registry.to_str().expect("utf-8"),
            "add",
            "kaggle:owner/data",
        ])
        .env_remove("KAGGLE_USERNAME")
        .env_remove("KAGGLE_KEY")
        .env("KAGGLE_CONFIG_DIR", home.path())
        .output()
        .expect("run");
    assert_refused(&o, &registry, "KAGGLE_USERNAME and KAGGLE_KEY");
}

/// A loopback stand-in for Kaggle's API: the dataset description, the
/// download as a zip, and the Authorization header it received.
struct KaggleStub {
    url: String,
    auth: Arc<std::sync::Mutex<Vec<String>>>,
}

fn kaggle_stub(zip: Vec<u8>) -> KaggleStub {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let auth = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = auth.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match std::io::Read::read(&mut stream, &mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            if let Some(line) = head
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
            {
                seen.lock().expect("lock").push(line.to_string());
            }
            let (status, kind, body): (&str, &str, Vec<u8>) = if path
                == "/api/v1/datasets/view/someone/city-temps"
            {
                (
                    "200 OK",
                    "application/json",
                    br#"{"ref": "someone/city-temps", "title": "City temperatures", "subtitle": "Daily means", "url": "https://www.kaggle.com/datasets/someone/city-temps", "licenseName": "CC0: Public Domain", "currentVersionNumber": 3}"#.to_vec(),
                )
            } else if path == "/api/v1/datasets/download/someone/city-temps" {
                ("200 OK", "application/zip", zip.clone())
            } else if path.starts_with("/api/v1/datasets/view/") {
                (
                    "200 OK",
                    "application/json",
                    br#"{"title": "Docs only"}"#.to_vec(),
                )
            } else if path.starts_with("/api/v1/datasets/download/") {
                let mut z = Vec::new();
                {
                    let mut w = zip::ZipWriter::new(std::io::Cursor::new(&mut z));
                    w.start_file("README.md", zip::write::SimpleFileOptions::default())
                        .expect("zip");
                    w.write_all(b"nothing tabular").expect("zip");
                    w.finish().expect("zip");
                }
                ("200 OK", "application/zip", z)
            } else {
                ("404 Not Found", "text/plain", b"no".to_vec())
            };
            let header = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(header.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    KaggleStub { url, auth }
}

#[test]
fn kaggle_datasets_come_through_the_api_with_their_description() {
    let _ = image();
    let mut zip = Vec::new();
    {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(&mut zip));
        w.start_file("temps.csv", zip::write::SimpleFileOptions::default())
            .expect("zip");
        w.write_all(b"city,day,mean\nOslo,2024-01-01,-3.5\nRome,2024-01-01,9.0\n")
            .expect("zip");
        w.finish().expect("zip");
    }
    let stub = kaggle_stub(zip);
    let (_d, registry) = new_registry();
    let home = tempfile::tempdir().expect("home");
    let key = "k3y-that-must-never-be-printed";
    let run = |reference: &str| {
        Command::new(BIN)
            .args([
                "datasets",
                "--datasets",
                registry.to_str().expect("utf-8"),
                "add",
                reference,
            ])
            .env("CSV_AGENT_KAGGLE_URL", &stub.url)
            .env("KAGGLE_USERNAME", "tester")
            .env("KAGGLE_KEY", key)
            .env("KAGGLE_CONFIG_DIR", home.path())
            .output()
            .expect("run")
    };
    // A dataset with no tabular file is refused, nothing left.
    let o = run("kaggle:someone/only-docs");
    assert_refused(&o, &registry, "no tabular file");

    let o = run("kaggle:someone/city-temps");
    assert_added(&o);
    assert!(!text(&o).contains(key), "the key was printed");
    let m = meta(&registry, "city-temps");
    assert_eq!(m["name"], "City temperatures");
    assert_eq!(m["license"], "CC0: Public Domain");
    assert_eq!(m["version"], "3");
    assert!(m["source"]
        .as_str()
        .unwrap_or("")
        .contains("https://www.kaggle.com/datasets/someone/city-temps"));
    assert_eq!(m["import"]["original"], "kaggle:someone/city-temps");
    assert_eq!(m["rows"], 2);
    // Basic auth with the user's credentials, and nothing stored of them.
    let expected = {
        use std::fmt::Write as _;
        let raw = format!("tester:{key}");
        let mut s = String::new();
        let _ = write!(s, "{}", base64(raw.as_bytes()));
        s
    };
    assert!(
        stub.auth
            .lock()
            .expect("lock")
            .iter()
            .all(|h| h.ends_with(&format!("Basic {expected}"))),
        "{:?}",
        stub.auth.lock().expect("lock")
    );
    let stored = std::fs::read_to_string(registry.join("city-temps/meta.json")).expect("meta");
    assert!(!stored.contains(key));
    let leftovers: Vec<_> = std::fs::read_dir(&registry)
        .expect("read")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn write_zip(path: &Path, files: &[(&str, &[u8])]) {
    let file = std::fs::File::create(path).expect("zip file");
    let mut w = zip::ZipWriter::new(file);
    for (name, bytes) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .expect("zip entry");
        w.write_all(bytes).expect("zip write");
    }
    w.finish().expect("zip finish");
}

/// A minimal workbook: sheet `People` (a header, integers with a gap, Excel
/// dates, floats, text), sheet `Second` (two rows), sheet `Empty`.
fn write_xlsx(path: &Path) {
    let cell_s = |r: &str, s: &str| format!("<c r=\"{r}\" t=\"inlineStr\"><is><t>{s}</t></is></c>");
    let cell_n = |r: &str, v: &str| format!("<c r=\"{r}\"><v>{v}</v></c>");
    let cell_d = |r: &str, v: &str| format!("<c r=\"{r}\" s=\"1\"><v>{v}</v></c>");
    let mut rows = format!(
        "<row r=\"1\">{}{}{}{}</row>",
        cell_s("A1", "count"),
        cell_s("B1", "day"),
        cell_s("C1", "price"),
        cell_s("D1", "name")
    );
    let data = [
        ("3", "45292", "1.5", "ann"),
        ("", "45293", "2.25", "bob"),
        ("7", "45294", "3", "cy"),
    ];
    for (i, (count, day, price, name)) in data.iter().enumerate() {
        let r = i + 2;
        let count = if count.is_empty() {
            String::new()
        } else {
            cell_n(&format!("A{r}"), count)
        };
        rows.push_str(&format!(
            "<row r=\"{r}\">{count}{}{}{}</row>",
            cell_d(&format!("B{r}"), day),
            cell_n(&format!("C{r}"), price),
            cell_s(&format!("D{r}"), name)
        ));
    }
    let sheet = |rows: &str| {
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?><worksheet xmlns=\"http://schemas.openxmlformats.org/spreadsheetml/2006/main\"><sheetData>{rows}</sheetData></worksheet>")
    };
    let second = format!(
        "<row r=\"1\">{}</row><row r=\"2\">{}</row><row r=\"3\">{}</row>",
        cell_s("A1", "k"),
        cell_n("A2", "1"),
        cell_n("A3", "2")
    );
    let ct = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?><Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\"><Default Extension=\"rels\" ContentType=\"application/vnd.openxmlformats-package.relationships+xml\"/><Default Extension=\"xml\" ContentType=\"application/xml\"/><Override PartName=\"/xl/workbook.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml\"/><Override PartName=\"/xl/worksheets/sheet1.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml\"/><Override PartName=\"/xl/worksheets/sheet2.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml\"/><Override PartName=\"/xl/worksheets/sheet3.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml\"/><Override PartName=\"/xl/styles.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml\"/></Types>";
    let rels = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?><Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\"><Relationship Id=\"rId1\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument\" Target=\"xl/workbook.xml\"/></Relationships>";
    let workbook = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?><workbook xmlns=\"http://schemas.openxmlformats.org/spreadsheetml/2006/main\" xmlns:r=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships\"><sheets><sheet name=\"People\" sheetId=\"1\" r:id=\"rId1\"/><sheet name=\"Second\" sheetId=\"2\" r:id=\"rId2\"/><sheet name=\"Empty\" sheetId=\"3\" r:id=\"rId3\"/></sheets></workbook>";
    let wb_rels = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?><Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\"><Relationship Id=\"rId1\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet\" Target=\"worksheets/sheet1.xml\"/><Relationship Id=\"rId2\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet\" Target=\"worksheets/sheet2.xml\"/><Relationship Id=\"rId3\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet\" Target=\"worksheets/sheet3.xml\"/><Relationship Id=\"rId4\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles\" Target=\"styles.xml\"/></Relationships>";
    let styles = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?><styleSheet xmlns=\"http://schemas.openxmlformats.org/spreadsheetml/2006/main\"><cellXfs count=\"2\"><xf numFmtId=\"0\" fontId=\"0\" fillId=\"0\" borderId=\"0\" xfId=\"0\"/><xf numFmtId=\"14\" fontId=\"0\" fillId=\"0\" borderId=\"0\" xfId=\"0\" applyNumberFormat=\"1\"/></cellXfs></styleSheet>";
    write_zip(
        path,
        &[
            ("[Content_Types].xml", ct.as_bytes()),
            ("_rels/.rels", rels.as_bytes()),
            ("xl/workbook.xml", workbook.as_bytes()),
            ("xl/_rels/workbook.xml.rels", wb_rels.as_bytes()),
            ("xl/styles.xml", styles.as_bytes()),
            ("xl/worksheets/sheet1.xml", sheet(&rows).as_bytes()),
            ("xl/worksheets/sheet2.xml", sheet(&second).as_bytes()),
            ("xl/worksheets/sheet3.xml", sheet("").as_bytes()),
        ],
    );
}

/// Snappy-compressed Parquet: required and optional integers, a string,
/// a DATE, a TIMESTAMP(MICROS) and a double.
fn write_parquet(path: &Path) {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    let schema = Arc::new(
        parse_message_type(
            "message m { REQUIRED INT64 id; OPTIONAL INT64 n; OPTIONAL BYTE_ARRAY name (UTF8); \
             OPTIONAL INT32 day (DATE); OPTIONAL INT64 at (TIMESTAMP(MICROS,false)); OPTIONAL DOUBLE x; }",
        )
        .expect("schema"),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let file = std::fs::File::create(path).expect("parquet file");
    let mut writer = SerializedFileWriter::new(file, schema, props).expect("writer");
    let mut group = writer.next_row_group().expect("row group");
    let mut n = 0;
    while let Some(mut column) = group.next_column().expect("column") {
        match n {
            0 => {
                column
                    .typed::<Int64Type>()
                    .write_batch(&[1, 2, 3], None, None)
                    .expect("id");
            }
            1 => {
                column
                    .typed::<Int64Type>()
                    .write_batch(&[5, 7], Some(&[1, 0, 1]), None)
                    .expect("n");
            }
            2 => {
                let names: Vec<ByteArray> =
                    ["a", "b"].iter().map(|s| ByteArray::from(*s)).collect();
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&names, Some(&[1, 1, 0]), None)
                    .expect("name");
            }
            3 => {
                column
                    .typed::<Int32Type>()
                    .write_batch(&[19_723, 19_724, 19_725], Some(&[1, 1, 1]), None)
                    .expect("day");
            }
            4 => {
                column
                    .typed::<Int64Type>()
                    .write_batch(
                        &[1_704_067_200_000_000, 1_704_070_800_500_000],
                        Some(&[1, 0, 1]),
                        None,
                    )
                    .expect("at");
            }
            _ => {
                column
                    .typed::<DoubleType>()
                    .write_batch(&[0.5, 1.5, 2.5], Some(&[1, 1, 1]), None)
                    .expect("x");
            }
        }
        column.close().expect("close column");
        n += 1;
    }
    group.close().expect("close group");
    writer.close().expect("close writer");
}
