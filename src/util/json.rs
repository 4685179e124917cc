//! A small JSON reader and writer (RFC 8259), for the definitions file: a
//! few kilobytes read once at start and written after a definitions change,
//! never on the message path. It keeps object members in file order (the
//! order of a queue's arguments is the order a client would see) and tells
//! integers from floats, as Erlang's JSON decoder does, because RabbitMQ
//! turns a JSON integer into a `long` argument and any other number into a
//! `double`.
//!
//! Written here rather than taken from serde_json because warren needs a
//! value tree and nothing else: no derive, no generic (de)serialisation.
//! The parser is strict: no comments, no trailing commas, no leading zeros,
//! no lone surrogates, nesting at most `DEPTH_MAX` deep; every error names
//! its line and column. The tests check it against serde_json (already in
//! the dev-dependency tree through lapin) on generated documents.

use std::fmt::Write as _;

/// Deepest nesting the parser accepts: definitions nest four or five
/// levels (an argument table inside a queue inside the document).
pub(crate) const DEPTH_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Int(i64),
    /// Any number with a fraction or an exponent, or an integer beyond i64.
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    /// Members in file order; a repeated key keeps every occurrence and
    /// [`Json::get`] sees the last, as a JSON object decoded into a map does.
    Object(Vec<(String, Json)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) message: String,
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid JSON at line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for JsonError {}

impl Json {
    /// The last member named `key`, if this is an object.
    pub(crate) fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }

    #[cfg(test)]
    pub(crate) fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    pub(crate) fn as_object(&self) -> Option<&[(String, Json)]> {
        match self {
            Json::Object(members) => Some(members),
            _ => None,
        }
    }

    /// What kind of value this is, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Int(_) | Json::Float(_) => "a number",
            Json::Str(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }

    /// Shorthand for building objects in code.
    pub(crate) fn object<K: Into<String>>(members: impl IntoIterator<Item = (K, Json)>) -> Json {
        Json::Object(members.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// Indented with two spaces, one member or item per line, ending in a newline.
    pub(crate) fn to_pretty_string(&self) -> String {
        let mut out = String::new();
        write_value(self, 0, &mut out);
        out.push('\n');
        out
    }
}

/// Parses one JSON document (whitespace around it allowed, nothing else).
pub(crate) fn parse(text: &str) -> Result<Json, JsonError> {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        at: 0,
    };
    // A UTF-8 byte-order mark is not JSON, but editors on some systems add one.
    if parser.bytes.starts_with(&[0xef, 0xbb, 0xbf]) {
        parser.at = 3;
    }
    parser.skip_whitespace();
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.at < parser.bytes.len() {
        return Err(parser.error("unexpected text after the end of the document"));
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> JsonError {
        self.error_at(self.at, message)
    }

    fn error_at(&self, at: usize, message: impl Into<String>) -> JsonError {
        let before = &self.bytes[..at.min(self.bytes.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        // Columns count characters, not bytes: skip UTF-8 continuation bytes.
        let column = before[line_start..]
            .iter()
            .filter(|&&b| b & 0xc0 != 0x80)
            .count()
            + 1;
        JsonError {
            line,
            column,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn expect_literal(&mut self, literal: &str, value: Json) -> Result<Json, JsonError> {
        if self.bytes[self.at..].starts_with(literal.as_bytes()) {
            self.at += literal.len();
            Ok(value)
        } else {
            Err(self.error("expected a value"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, JsonError> {
        match self.peek() {
            None => Err(self.error("unexpected end of input, expected a value")),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') => self.expect_literal("true", Json::Bool(true)),
            Some(b'f') => self.expect_literal("false", Json::Bool(false)),
            Some(b'n') => self.expect_literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("expected a value")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, JsonError> {
        if depth > DEPTH_MAX {
            return Err(self.error(format!("nested deeper than {} levels", DEPTH_MAX)));
        }
        self.at += 1;
        let mut members = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Json::Object(members));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a member name in double quotes"));
            }
            let key = self.string()?;
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':' after a member name"));
            }
            self.at += 1;
            self.skip_whitespace();
            let value = self.value(depth)?;
            members.push((key, value));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Json::Object(members));
                }
                None => return Err(self.error("unexpected end of input inside an object")),
                Some(_) => return Err(self.error("expected ',' or '}' in an object")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, JsonError> {
        if depth > DEPTH_MAX {
            return Err(self.error(format!("nested deeper than {} levels", DEPTH_MAX)));
        }
        self.at += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Json::Array(items));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                None => return Err(self.error("unexpected end of input inside an array")),
                Some(_) => return Err(self.error("expected ',' or ']' in an array")),
            }
        }
    }

    fn string(&mut self) -> Result<String, JsonError> {
        let start = self.at;
        self.at += 1;
        let mut out = String::new();
        loop {
            // Copy the run of plain characters up to the next quote, escape
            // or control character in one go.
            let run_start = self.at;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.at += 1;
            }
            // The input is a &str, and a run stops only at ASCII bytes, so
            // the run is whole characters.
            out.push_str(
                std::str::from_utf8(&self.bytes[run_start..self.at])
                    .map_err(|_| self.error_at(run_start, "invalid UTF-8"))?,
            );
            match self.peek() {
                None => return Err(self.error_at(start, "string is never closed")),
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    let escape = self.peek();
                    self.at += 1;
                    match escape {
                        Some(b'"') => out.push('"'),
                        Some(b'\\') => out.push('\\'),
                        Some(b'/') => out.push('/'),
                        Some(b'b') => out.push('\u{8}'),
                        Some(b'f') => out.push('\u{c}'),
                        Some(b'n') => out.push('\n'),
                        Some(b'r') => out.push('\r'),
                        Some(b't') => out.push('\t'),
                        Some(b'u') => out.push(self.unicode_escape()?),
                        _ => return Err(self.error_at(self.at - 2, "invalid escape in a string")),
                    }
                }
                Some(_) => {
                    return Err(self.error("control character in a string (escape it)"));
                }
            }
        }
    }

    /// After `\u`: four hex digits, or a surrogate pair written as two escapes.
    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let escape_at = self.at - 2;
        let high = self.hex4()?;
        let code = if (0xd800..0xdc00).contains(&high) {
            if !self.bytes[self.at..].starts_with(b"\\u") {
                return Err(self.error_at(escape_at, "unpaired surrogate in a \\u escape"));
            }
            self.at += 2;
            let low = self.hex4()?;
            if !(0xdc00..0xe000).contains(&low) {
                return Err(self.error_at(escape_at, "unpaired surrogate in a \\u escape"));
            }
            0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00)
        } else {
            high
        };
        char::from_u32(code)
            .ok_or_else(|| self.error_at(escape_at, "unpaired surrogate in a \\u escape"))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .bytes
            .get(self.at..self.at + 4)
            .ok_or_else(|| self.error("expected four hex digits after \\u"))?;
        let mut value = 0;
        for &d in digits {
            let digit = (d as char)
                .to_digit(16)
                .ok_or_else(|| self.error("expected four hex digits after \\u"))?;
            value = value * 16 + digit;
        }
        self.at += 4;
        Ok(value)
    }

    fn number(&mut self) -> Result<Json, JsonError> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.at += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.error_at(start, "numbers may not have leading zeros"));
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error_at(start, "expected a digit")),
        }
        let mut integral = true;
        if self.peek() == Some(b'.') {
            integral = false;
            self.at += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("expected a digit after the decimal point"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            integral = false;
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("expected a digit in the exponent"));
            }
            self.digits();
        }
        // Only ASCII digits, signs, '.', 'e' were consumed.
        let text = std::str::from_utf8(&self.bytes[start..self.at]).unwrap_or("0");
        if integral {
            if let Ok(n) = text.parse::<i64>() {
                return Ok(Json::Int(n));
            }
        }
        text.parse::<f64>()
            .map(Json::Float)
            .map_err(|_| self.error_at(start, "number out of range"))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }
}

fn write_value(value: &Json, indent: usize, out: &mut String) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Int(n) => {
            let _ = write!(out, "{}", n);
        }
        Json::Float(x) => write_float(*x, out),
        Json::Str(s) => write_string(s, out),
        Json::Array(items) if items.is_empty() => out.push_str("[]"),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(indent + 1, out);
                write_value(item, indent + 1, out);
            }
            newline(indent, out);
            out.push(']');
        }
        Json::Object(members) if members.is_empty() => out.push_str("{}"),
        Json::Object(members) => {
            out.push('{');
            for (i, (key, item)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(indent + 1, out);
                write_string(key, out);
                out.push_str(": ");
                write_value(item, indent + 1, out);
            }
            newline(indent, out);
            out.push('}');
        }
    }
}

fn newline(indent: usize, out: &mut String) {
    out.push('\n');
    for _ in 0..indent {
        out.push_str("  ");
    }
}

/// The shortest text that reads back as the same f64, always with a '.' or
/// an exponent so that it reads back as a float, not an integer. JSON has
/// no NaN or infinity: those are written as null.
fn write_float(x: f64, out: &mut String) {
    if !x.is_finite() {
        out.push_str("null");
        return;
    }
    // Debug prints the shortest round-trip form, "100.0" or "1e300".
    let _ = write!(out, "{:?}", x);
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> JsonError {
        parse(text).expect_err(text)
    }

    #[test]
    fn reads_every_kind_of_value() {
        let doc = parse(
            r#" { "a": [1, -2, 3.5, -0.25e2, 1E3, true, false, null],
                  "s": "x\"y\\z\/\b\f\n\r\t\u00e9\ud83d\ude00",
                  "o": {}, "e": [] } "#,
        )
        .unwrap();
        assert_eq!(
            doc.get("a").unwrap(),
            &Json::Array(vec![
                Json::Int(1),
                Json::Int(-2),
                Json::Float(3.5),
                Json::Float(-25.0),
                Json::Float(1000.0),
                Json::Bool(true),
                Json::Bool(false),
                Json::Null,
            ])
        );
        assert_eq!(
            doc.get("s").unwrap().as_str().unwrap(),
            "x\"y\\z/\u{8}\u{c}\n\r\t\u{e9}\u{1f600}"
        );
        assert_eq!(doc.get("o"), Some(&Json::Object(vec![])));
        assert_eq!(doc.get("e"), Some(&Json::Array(vec![])));
        assert_eq!(doc.get("missing"), None);
    }

    #[test]
    fn keeps_member_order_and_the_last_duplicate_wins() {
        let doc = parse(r#"{"z": 1, "a": 2, "z": 3}"#).unwrap();
        let keys: Vec<&str> = doc
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["z", "a", "z"]);
        assert_eq!(doc.get("z"), Some(&Json::Int(3)));
    }

    #[test]
    fn integers_beyond_i64_become_floats() {
        assert_eq!(parse("9223372036854775807").unwrap(), Json::Int(i64::MAX));
        assert_eq!(parse("-9223372036854775808").unwrap(), Json::Int(i64::MIN));
        assert_eq!(
            parse("9223372036854775808").unwrap(),
            Json::Float(9223372036854775808.0)
        );
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = err("{\n  \"a\": 1,\n  \"b\" 2\n}");
        assert_eq!((e.line, e.column), (3, 7), "{e}");
        assert!(e.message.contains("':'"), "{e}");
        assert_eq!(
            e.to_string(),
            "invalid JSON at line 3, column 7: expected ':' after a member name"
        );
        let e = err("[1, 2");
        assert_eq!((e.line, e.column), (1, 6), "{e}");
        let e = err("\"é\u{1}\"");
        assert_eq!((e.line, e.column), (1, 3), "{e}");
    }

    #[test]
    fn refuses_what_rfc_8259_refuses() {
        for bad in [
            "",
            " ",
            "{",
            "}",
            "[1,]",
            "{\"a\":1,}",
            "{a:1}",
            "{'a':1}",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "+1",
            "NaN",
            "Infinity",
            "tru",
            "nul",
            "\"abc",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\ud800\"",
            "\"\\ud800\\u0041\"",
            "\"\\udc00\"",
            "\"tab\there\"",
            "[1] [2]",
            "// comment\n{}",
            "{\"a\":1 /* c */}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = "[".repeat(DEPTH_MAX) + &"]".repeat(DEPTH_MAX);
        assert!(parse(&ok).is_ok());
        let deep = "[".repeat(DEPTH_MAX + 1) + &"]".repeat(DEPTH_MAX + 1);
        assert!(err(&deep).message.contains("nested deeper"));
        // Far deeper input fails the same way, without exhausting the stack.
        let very_deep = "{\"a\":".repeat(100_000);
        assert!(err(&very_deep).message.contains("nested deeper"));
    }

    #[test]
    fn accepts_a_byte_order_mark() {
        assert_eq!(parse("\u{feff}{}").unwrap(), Json::Object(vec![]));
    }

    #[test]
    fn writes_what_it_reads() {
        let text = r#"{"name":"q\"1\\\n\u0001é","n":[0,-7,9223372036854775807,1.5,100.0,1e300,-2.5e-10],"t":true,"f":false,"z":null,"o":{"e":{},"a":[]}}"#;
        let doc = parse(text).unwrap();
        let pretty = doc.to_pretty_string();
        assert_eq!(parse(&pretty).unwrap(), doc);
        assert!(pretty.contains("\"q\\\"1\\\\\\n\\u0001é\""), "{pretty}");
        assert!(pretty.contains("100.0"), "floats stay floats: {pretty}");
        assert!(pretty.ends_with("}\n"));
        assert_eq!(
            Json::object([
                ("a", Json::Array(vec![Json::Int(1)])),
                ("b", Json::object::<&str>([]))
            ])
            .to_pretty_string(),
            "{\n  \"a\": [\n    1\n  ],\n  \"b\": {}\n}\n"
        );
        assert_eq!(Json::Float(f64::NAN).to_pretty_string(), "null\n");
    }

    /// Random documents, written by us and read back by serde_json and by us:
    /// both must see the same values (serde_json is the oracle for both the
    /// writer and the reader).
    #[test]
    fn agrees_with_serde_json_on_generated_documents() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let doc = generate(&mut next, 0);
            let text = doc.to_pretty_string();
            let ours = parse(&text).unwrap();
            assert_eq!(ours, doc, "{text}");
            let theirs: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_same(&ours, &theirs, &text);
            // And the other way: serde_json's compact output, read by us.
            let compact = serde_json::to_string(&theirs).unwrap();
            assert_same(&parse(&compact).unwrap(), &theirs, &compact);
        }
    }

    fn generate(next: &mut impl FnMut() -> u64, depth: usize) -> Json {
        let pick = next() % if depth > 3 { 5 } else { 7 };
        match pick {
            0 => Json::Null,
            1 => Json::Bool(next().is_multiple_of(2)),
            2 => Json::Int(next() as i64 >> (next() % 64)),
            3 => Json::Float((next() as i64 >> 20) as f64 / 1024.0 + 0.5),
            4 => {
                let len = next() % 12;
                Json::Str(
                    (0..len)
                        .map(|_| {
                            let chars =
                                ['a', '"', '\\', '\n', '\u{1}', 'é', '😀', '/', ' ', '\u{7f}'];
                            chars[(next() % chars.len() as u64) as usize]
                        })
                        .collect(),
                )
            }
            5 => Json::Array((0..next() % 5).map(|_| generate(next, depth + 1)).collect()),
            _ => Json::Object(
                (0..next() % 5)
                    .map(|i| {
                        (
                            format!("k{}-{}", i, next() % 100),
                            generate(next, depth + 1),
                        )
                    })
                    .collect(),
            ),
        }
    }

    fn assert_same(ours: &Json, theirs: &serde_json::Value, text: &str) {
        use serde_json::Value;
        match (ours, theirs) {
            (Json::Null, Value::Null) => {}
            (Json::Bool(a), Value::Bool(b)) => assert_eq!(a, b, "{text}"),
            (Json::Int(a), Value::Number(b)) => assert_eq!(Some(*a), b.as_i64(), "{text}"),
            (Json::Float(a), Value::Number(b)) => {
                // serde_json without its float_roundtrip feature may be one
                // unit in the last place off; exactness is checked above,
                // against the generated value itself.
                let b = b.as_f64().unwrap();
                assert!(
                    (a - b).abs() <= a.abs() * 4.0 * f64::EPSILON,
                    "{a} vs {b} in {text}"
                );
            }
            (Json::Str(a), Value::String(b)) => assert_eq!(a, b, "{text}"),
            (Json::Array(a), Value::Array(b)) => {
                assert_eq!(a.len(), b.len(), "{text}");
                for (x, y) in a.iter().zip(b) {
                    assert_same(x, y, text);
                }
            }
            (Json::Object(a), Value::Object(b)) => {
                // Generated keys are unique, so the counts agree.
                assert_eq!(a.len(), b.len(), "{text}");
                for (k, v) in a {
                    assert_same(v, &b[k], text);
                }
            }
            _ => panic!("{ours:?} vs {theirs:?} in {text}"),
        }
    }
}
