//! Validation reports every problem with its path, and compile routes what validated.

use wharf_config::{Format, compile, load, parse, validate, validate_update};

const BASE: &str = r#"
version = 1
domain = "wharf.localhost"
[[spaces]]
name = "prod"
compliance = ["prod"]
[[spaces]]
name = "back"
compliance = ["internal"]
[[apps]]
name = "api"
space = "prod"
release = 1
[[apps]]
name = "admin"
space = "back"
[[releases]]
app = "api-prod"
version = 1
artifact = { image = "api:1" }
[[endpoints]]
app = "api-prod"
release = 1
process = "web.1"
address = "127.0.0.1:5001"
[[sites]]
domain = "www.example.com"
[[routes]]
site = "www.example.com"
source_path = "/api"
app = "api-prod"
target_path = "/v3/api"
"#;

fn problems(text: &str) -> Vec<String> {
    match load(text, Format::Toml) {
        Ok(_) => Vec::new(),
        Err(p) => p.iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn base_is_valid() {
    assert_eq!(problems(BASE), Vec::<String>::new());
}

#[test]
fn three_independent_mistakes_are_all_reported() {
    let text = format!(
        "{BASE}
[[routes]]
site = \"www.example.com\"
source_path = \"/x\"
app = \"nope-prod\"
target_path = \"/\"
[[canaries]]
app = \"api-prod\"
stable_release = 1
canary_release = 1
weight = 140
[[drains]]
app = \"api-prod\"
url = \"ftp://logs.example.com\"
"
    );
    let p = problems(&text);
    assert!(
        p.contains(&"routes[1].app: unknown app \"nope-prod\"".to_owned()),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|l| l.starts_with("canaries[0].weight: 140 is outside 0–100")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|l| l.starts_with("drains[0].url: scheme \"ftp\"")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|l| l.starts_with("canaries[0].canary_release: must differ")),
        "{p:#?}"
    );
    assert_eq!(p.len(), 4, "{p:#?}");
}

#[test]
fn each_kind_of_mistake() {
    let cases: &[(&str, &str)] = &[
        (
            "[[apps]]\nname = \"api\"\nspace = \"prod\"\n",
            "apps[2].name: duplicate app \"api-prod\"",
        ),
        (
            "[[apps]]\nname = \"x\"\nspace = \"nowhere\"\n",
            "apps[2].space: unknown space \"nowhere\"",
        ),
        (
            "[[apps]]\nname = \"Bad_Name\"\nspace = \"prod\"\n",
            "apps[2].name: \"Bad_Name\" must start with a lowercase letter",
        ),
        (
            "[[routes]]\nsite = \"nosite.example.com\"\nsource_path = \"/\"\napp = \"api-prod\"\ntarget_path = \"/\"\n",
            "routes[1].site: unknown site",
        ),
        (
            "[[routes]]\nsite = \"www.example.com\"\nsource_path = \"/api/\"\napp = \"api-prod\"\ntarget_path = \"/\"\n",
            "routes[1].source_path: site \"www.example.com\" already routes",
        ),
        (
            "[[routes]]\nsite = \"www.example.com\"\nsource_path = \"admin\"\napp = \"admin-back\"\ntarget_path = \"/\"\n",
            "routes[1].app: app \"admin-back\" is in internal space",
        ),
        (
            "[[routes]]\nsite = \"www.example.com\"\nsource_path = \"nope\"\napp = \"api-prod\"\ntarget_path = \"/\"\n",
            "routes[1].source_path: \"nope\" must start with '/'",
        ),
        (
            "[[filters]]\ntype = \"cors\"\nname = \"c\"\nallow_origin = [\"*\"]\nallow_credentials = true\n",
            "filters[0].allow_origin[0]: \"*\" cannot be combined",
        ),
        (
            "[[filters]]\ntype = \"jwt\"\nname = \"j\"\njwks_uri = \"http://auth.example.com/jwks\"\nissuer = \"i\"\n",
            "filters[0].jwks_uri: must be https://",
        ),
        (
            "[[filters]]\ntype = \"jwt\"\nname = \"j\"\njwks_uri = \"https://a.example.com/j\"\nissuer = \"i\"\nalgorithms = [\"HS256\"]\n",
            "filters[0].algorithms[0]: \"HS256\" is not accepted",
        ),
        (
            "[[filters]]\ntype = \"jwt\"\nname = \"j\"\njwks_uri = \"https://a.example.com/j\"\nissuer = \"i\"\nalgorithms = [\"none\"]\n",
            "filters[0].algorithms[0]: \"none\" is not accepted",
        ),
        (
            "[[attachments]]\napp = \"api-prod\"\nfilter = \"ghost\"\n",
            "attachments[0].filter: unknown filter \"ghost\"",
        ),
        (
            "[[certificates]]\nname = \"c\"\nnames = [\"*.*.example.com\"]\ncert_pem = \"x\"\nkey_pem = \"y\"\n",
            "certificates[0].names[0]: wildcard \"*.*.example.com\"",
        ),
        (
            "[[certificates]]\nname = \"c\"\nnames = [\"a.example.com\"]\ncert_pem = \"not pem\"\nkey_pem = \"not pem\"\n",
            "certificates[0].cert_pem: holds no PEM certificate",
        ),
        (
            "[[drains]]\napp = \"api-prod\"\nurl = \"http://logs.example.com/\"\n",
            "drains[0].url: http:// drains are off",
        ),
        (
            "[[endpoints]]\napp = \"api-prod\"\nrelease = 9\nprocess = \"web.2\"\naddress = \"127.0.0.1:1\"\n",
            "endpoints[1].release: app \"api-prod\" has no release v9",
        ),
        (
            "[[formation]]\napp = \"api-prod\"\ntype = \"web\"\nsize = \"huge\"\n",
            "formation[0].size: unknown dyno size \"huge\"",
        ),
        (
            "[[formation]]\napp = \"api-prod\"\ntype = \"job\"\nschedule = \"61 * * * *\"\n",
            "formation[0].schedule:",
        ),
        (
            "[[sites]]\ndomain = \"api-prod.wharf.localhost\"\n",
            "sites[1].domain: host \"api-prod.wharf.localhost\" is already served by app \"api-prod\"",
        ),
        (
            "[[releases]]\napp = \"api-prod\"\nversion = 1\nartifact = { image = \"x\" }\nconfig_vars = { \"1BAD\" = \"v\" }\n",
            "releases[1].version: duplicate release v1",
        ),
    ];
    for (extra, expected) in cases {
        let p = problems(&format!("{BASE}\n{extra}"));
        assert!(
            p.iter().any(|l| l.starts_with(expected)),
            "expected {expected:?} for\n{extra}\ngot {p:#?}"
        );
    }
}

#[test]
fn compliance_cannot_change() {
    let before = parse(BASE, Format::Toml).unwrap();
    let after = parse(
        &BASE.replacen(
            "compliance = [\"prod\"]",
            "compliance = [\"prod\", \"socs\"]",
            1,
        ),
        Format::Toml,
    )
    .unwrap();
    let err = validate_update(&before, after).unwrap_err();
    assert!(
        err.to_string()
            .contains("spaces[0].compliance: the compliance of space \"prod\" cannot change"),
        "{err}"
    );
    assert!(validate_update(&before, before.clone()).is_ok());
}

#[test]
fn compiled_table_routes() {
    let v = validate(parse(BASE, Format::Toml).unwrap()).unwrap();
    let t = compile(&v).router;
    let f = t
        .find("api-prod.wharf.localhost", "/anything", false)
        .unwrap();
    assert_eq!(t.apps[f.app].key, "api-prod");
    assert_eq!(t.apps[f.app].web.len(), 1);
    // Internal apps exist only on the internal listener, and look unknown elsewhere.
    assert!(t.find("admin-back.wharf.localhost", "/", false).is_err());
    assert!(t.find("admin-back.wharf.localhost", "/", true).is_ok());
    let f = t.find("www.example.com", "/api/x?q=1", false).unwrap();
    let (route, len) = f.route.unwrap();
    assert_eq!(
        wharf_config::paths::rewrite(&route.target_path, "/api/x?q=1", len),
        "/v3/api/x?q=1"
    );
    assert!(t.find("www.example.com", "/apiary", false).is_err());
    assert!(t.find("unknown.example.com", "/", false).is_err());
}

#[test]
fn example_in_deploy_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/wharf.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut s = parse(&text, Format::Toml).unwrap();
    let dir = std::path::Path::new(path).parent().unwrap().to_owned();
    s.load_files(|f| std::fs::read_to_string(dir.join(f)).map_err(|e| e.to_string()))
        .unwrap();
    let v = validate(s).unwrap_or_else(|p| panic!("{p}"));
    let c = compile(&v);
    let api = c.router.apps.iter().find(|a| a.key == "api-prod").unwrap();
    assert_eq!(api.web.len(), 2);
    assert_eq!(api.canary.as_ref().unwrap().backends.len(), 1);
    assert_eq!(api.filters.len(), 2);
    assert_eq!(c.shuttle.apps["api-prod"].drains.len(), 2);
}
