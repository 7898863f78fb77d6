//! Config files, TOML and JSON: parse → load_files → validate → compile never panic, and a
//! snapshot that validated survives a JSON and a TOML round trip and compiles to the same tables.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_config::{Format, compile, parse, to_json, to_toml, validate};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = if selector & 1 == 0 {
        Format::Toml
    } else {
        Format::Json
    };
    let Ok(mut snapshot) = parse(text, format) else {
        return;
    };
    // Certificate files come from the caller's I/O; here every file reads as its own name.
    if snapshot.load_files(|p| Ok(p.to_owned())).is_err() {
        return;
    }
    let Ok(valid) = validate(snapshot) else {
        return;
    };
    let compiled = compile(&valid);

    let json = to_json(&valid);
    let back = parse(&json, Format::Json).expect("the JSON of a valid snapshot parses");
    let back = validate(back).expect("the JSON of a valid snapshot validates");
    assert_eq!(
        compile(&back),
        compiled,
        "JSON round trip changed the tables"
    );

    if let Ok(toml) = to_toml(&valid) {
        let back = parse(&toml, Format::Toml).expect("the TOML of a valid snapshot parses");
        let back = validate(back).expect("the TOML of a valid snapshot validates");
        assert_eq!(
            compile(&back),
            compiled,
            "TOML round trip changed the tables"
        );
    }
});
