//! Python literals (`repr`/`eval` syntax), as in the Amazon 2014 metadata: one dict per line.
//!
//! The 2014 `meta_<Cat>.json.gz` files were written with Python's `str(dict)`, so strings are
//! single-quoted (double-quoted when they contain a `'`), with Python escapes, and the constants
//! are `True`/`False`/`None`. `json.loads` rejects them; the usual scripts call `eval`. This is
//! the subset `repr` produces, mapped onto JSON values so one field extractor serves both.

use serde_json::{Map, Number, Value};

/// Where a literal went wrong: a 1-based character column and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyLitError {
    pub column: usize,
    pub msg: String,
}

/// Parses one complete Python literal (trailing whitespace allowed).
pub fn parse(text: &str) -> Result<Value, PyLitError> {
    let mut p = Parser {
        chars: text.chars().collect(),
        pos: 0,
    };
    let value = p.value(0)?;
    p.skip_ws();
    if p.pos < p.chars.len() {
        return Err(p.err("unexpected text after the literal"));
    }
    Ok(value)
}

/// Deeper nesting than any metadata needs is refused rather than risking the stack.
const MAX_DEPTH: usize = 64;

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn err(&self, msg: impl Into<String>) -> PyLitError {
        PyLitError {
            column: self.pos + 1,
            msg: msg.into(),
        }
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, PyLitError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.skip_ws();
        match self.peek() {
            Some('{') => self.dict(depth),
            Some('[') => self.seq(']', depth),
            Some('(') => self.seq(')', depth),
            Some('\'' | '"') => self.string().map(Value::String),
            // Python 2 reprs prefix unicode and byte strings.
            Some('u' | 'U' | 'b' | 'B')
                if matches!(self.chars.get(self.pos + 1), Some('\'' | '"')) =>
            {
                self.pos += 1;
                self.string().map(Value::String)
            }
            Some(c) if c == '-' || c == '+' || c == '.' || c.is_ascii_digit() => self.number(),
            Some(c) if c.is_ascii_alphabetic() => self.constant(),
            Some(c) => Err(self.err(format!("unexpected character '{c}'"))),
            None => Err(self.err("unexpected end of line")),
        }
    }

    fn constant(&mut self) -> Result<Value, PyLitError> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.pos += 1;
        }
        let word: String = self.chars[start..self.pos].iter().copied().collect();
        match word.as_str() {
            "True" => Ok(Value::Bool(true)),
            "False" => Ok(Value::Bool(false)),
            "None" => Ok(Value::Null),
            // `float('nan')` reprs as nan/inf; JSON has no such numbers, and no text field uses them.
            "nan" | "inf" => Ok(Value::Null),
            _ => {
                self.pos = start;
                Err(self.err(format!("unknown name '{word}'")))
            }
        }
    }

    fn number(&mut self) -> Result<Value, PyLitError> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '_'))
        {
            self.pos += 1;
        }
        let raw: String = self.chars[start..self.pos]
            .iter()
            .copied()
            .filter(|&c| c != '_')
            .collect();
        // Python 2 longs end in L.
        let raw = raw.strip_suffix(['L', 'l']).unwrap_or(&raw);
        if let Ok(i) = raw.parse::<i64>() {
            return Ok(Value::Number(i.into()));
        }
        match raw.parse::<f64>().ok().and_then(Number::from_f64) {
            Some(n) => Ok(Value::Number(n)),
            None if raw.ends_with("inf") => Ok(Value::Null),
            None => {
                self.pos = start;
                Err(self.err(format!("bad number '{raw}'")))
            }
        }
    }

    /// `open` is `{`; entries `key: value` separated by commas, a trailing comma allowed.
    fn dict(&mut self, depth: usize) -> Result<Value, PyLitError> {
        self.pos += 1;
        let mut map = Map::new();
        loop {
            self.skip_ws();
            if self.peek() == Some('}') {
                self.pos += 1;
                return Ok(Value::Object(map));
            }
            let key = match self.value(depth + 1)? {
                Value::String(s) => s,
                // Keys in metadata are strings; a number key still has an obvious JSON name.
                Value::Number(n) => n.to_string(),
                _ => return Err(self.err("dict key must be a string or a number")),
            };
            self.skip_ws();
            if self.peek() != Some(':') {
                return Err(self.err("expected ':' after a dict key"));
            }
            self.pos += 1;
            let value = self.value(depth + 1)?;
            map.insert(key, value);
            if !self.separator('}')? {
                return Err(self.err("expected ',' or '}' in a dict"));
            }
        }
    }

    /// A list or tuple, both read as a JSON list.
    fn seq(&mut self, close: char, depth: usize) -> Result<Value, PyLitError> {
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(Value::Array(items));
            }
            items.push(self.value(depth + 1)?);
            if !self.separator(close)? {
                return Err(self.err(format!("expected ',' or '{close}'")));
            }
        }
    }

    /// After an element: a comma (consumed; true), or the closing bracket (left; true), or
    /// anything else (false).
    fn separator(&mut self, close: char) -> Result<bool, PyLitError> {
        self.skip_ws();
        match self.peek() {
            Some(',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(c) if c == close => Ok(true),
            None => Err(self.err("unexpected end of line")),
            _ => Ok(false),
        }
    }

    fn string(&mut self) -> Result<String, PyLitError> {
        let quote = self.peek().unwrap_or('\'');
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    self.pos = open;
                    return Err(self.err("unterminated string"));
                }
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') => {
                    self.pos += 1;
                    self.escape(&mut out)?;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// One escape, the backslash already consumed. Unknown escapes stay verbatim, as in Python.
    fn escape(&mut self, out: &mut String) -> Result<(), PyLitError> {
        let Some(c) = self.peek() else {
            return Err(self.err("unterminated string"));
        };
        self.pos += 1;
        let simple = match c {
            'n' => Some('\n'),
            't' => Some('\t'),
            'r' => Some('\r'),
            '0' => Some('\0'),
            'a' => Some('\u{7}'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'v' => Some('\u{b}'),
            '\\' | '\'' | '"' => Some(c),
            '\n' => return Ok(()),
            _ => None,
        };
        if let Some(s) = simple {
            out.push(s);
            return Ok(());
        }
        let digits = match c {
            'x' => 2,
            'u' => 4,
            'U' => 8,
            _ => {
                out.push('\\');
                out.push(c);
                return Ok(());
            }
        };
        let hex: String = self.chars[self.pos..]
            .iter()
            .take(digits)
            .copied()
            .collect();
        let code = (hex.len() == digits)
            .then(|| u32::from_str_radix(&hex, 16).ok())
            .flatten()
            .and_then(char::from_u32);
        match code {
            Some(ch) => {
                out.push(ch);
                self.pos += digits;
                Ok(())
            }
            None => Err(self.err(format!("bad \\{c} escape"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn amazon_2014_meta_line() {
        let line = r#"{'asin': '0000031852', 'title': "Girls' Ballet Tutu", 'price': 3.17, 'salesRank': {'Sports &amp; Outdoors': 8547}, 'categories': [['Beauty', 'Makeup'], ['Clothing']], 'related': {'also_bought': ['B00JHONN1S']}, 'flag': True, 'none': None, 'x': False}"#;
        assert_eq!(
            parse(line).unwrap(),
            json!({"asin": "0000031852", "title": "Girls' Ballet Tutu", "price": 3.17,
                "salesRank": {"Sports &amp; Outdoors": 8547},
                "categories": [["Beauty", "Makeup"], ["Clothing"]],
                "related": {"also_bought": ["B00JHONN1S"]}, "flag": true, "none": null, "x": false})
        );
    }

    #[test]
    fn escapes_and_prefixes() {
        assert_eq!(
            parse(r#"u'caf\xe9 \'x\' \u2122 \\ \n \q'"#).unwrap(),
            json!("café 'x' ™ \\ \n \\q")
        );
        assert_eq!(parse("(1, -2.5, 3L, [])").unwrap(), json!([1, -2.5, 3, []]));
        assert_eq!(parse("{'a': [1,],}").unwrap(), json!({"a": [1]}));
    }

    #[test]
    fn errors_carry_columns() {
        let e = parse("{'a': 'b'").unwrap_err();
        assert_eq!(e.column, 10);
        let e = parse("{'a' 'b'}").unwrap_err();
        assert_eq!(
            (e.column, e.msg.as_str()),
            (6, "expected ':' after a dict key")
        );
        let e = parse("{'a': nope}").unwrap_err();
        assert_eq!(e.column, 7);
        assert!(parse("{'a': 'unterminated}").is_err());
        assert!(parse("{'a': 1} extra").is_err());
    }
}
