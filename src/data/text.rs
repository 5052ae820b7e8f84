//! Item text: HTML-entity unescaping, whitespace normalisation and the text template.

/// How an item's text is built from its fields; recorded next to embeddings so a later run can
/// tell whether its text matches. Brand and description parts appear only when present.
pub const ITEM_TEXT_TEMPLATE: &str =
    "{title}. Categories: {categories}[. Brand: {brand}][. {description}]";

/// Named entities we decode. The source data (Amazon product titles) was HTML-escaped by a
/// scraper, so beyond the XML five we cover the Latin-1 and typographic ones that occur there;
/// anything else is left as written rather than guessed.
const NAMED: &[(&str, char)] = &[
    ("amp", '&'),
    ("quot", '"'),
    ("apos", '\''),
    ("lt", '<'),
    ("gt", '>'),
    ("nbsp", '\u{a0}'),
    ("reg", '®'),
    ("copy", '©'),
    ("trade", '™'),
    ("deg", '°'),
    ("bull", '•'),
    ("hellip", '…'),
    ("ndash", '–'),
    ("mdash", '—'),
    ("lsquo", '‘'),
    ("rsquo", '’'),
    ("ldquo", '“'),
    ("rdquo", '”'),
    ("hearts", '♥'),
    ("frac12", '½'),
    ("frac14", '¼'),
    ("frac34", '¾'),
    ("ordm", 'º'),
    ("ordf", 'ª'),
    ("micro", 'µ'),
    ("times", '×'),
    ("eacute", 'é'),
    ("Eacute", 'É'),
    ("egrave", 'è'),
    ("Egrave", 'È'),
    ("ecirc", 'ê'),
    ("aacute", 'á'),
    ("agrave", 'à'),
    ("acirc", 'â'),
    ("iacute", 'í'),
    ("oacute", 'ó'),
    ("ouml", 'ö'),
    ("uuml", 'ü'),
    ("auml", 'ä'),
    ("ntilde", 'ñ'),
    ("ccedil", 'ç'),
    ("szlig", 'ß'),
];

/// Numeric references 128..=159 name C1 control characters, but web pages use them for the
/// Windows-1252 glyphs (`&#153;` for ™); HTML5 decodes them that way, and so do we.
const CP1252: [char; 32] = [
    '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}',
    '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
];

/// Decodes one entity body (the part between `&` and `;`), or `None` when it is not one we know.
fn decode_entity(body: &str) -> Option<char> {
    if let Some(num) = body.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse::<u32>().ok()?,
        };
        if (128..160).contains(&code) {
            return CP1252.get((code - 128) as usize).copied();
        }
        return char::from_u32(code).filter(|&c| c != '\0');
    }
    NAMED
        .iter()
        .find(|(name, _)| *name == body)
        .map(|&(_, c)| c)
}

/// Replaces HTML entities (`&amp;`, `&#39;`, `&#x27;`, ...) by their characters in one pass, so
/// `&amp;lt;` becomes `&lt;`, as a browser shows it. Unknown or unterminated ones stay verbatim.
pub fn unescape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        // Entity names are short; bounding the search keeps a stray '&' from scanning far.
        let decoded = after
            .char_indices()
            .take(12)
            .find(|&(_, c)| c == ';')
            .and_then(|(semi, _)| decode_entity(&after[..semi]).map(|c| (c, semi)));
        match decoded {
            Some((c, semi)) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Collapses every run of whitespace (newlines and no-break spaces included) to one space and
/// trims the ends, so titles scraped with stray line breaks tokenise like any other.
pub fn normalize_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Unescapes and normalises one raw field.
pub fn clean(s: &str) -> String {
    normalize_whitespace(&unescape_html(s))
}

/// Builds an item's text from already-cleaned fields, following [`ITEM_TEXT_TEMPLATE`].
pub fn item_text(
    title: &str,
    categories: &str,
    brand: Option<&str>,
    description: Option<&str>,
) -> String {
    let mut text = format!("{title}. Categories: {categories}");
    if let Some(brand) = brand {
        text.push_str(". Brand: ");
        text.push_str(brand);
    }
    if let Some(description) = description {
        text.push_str(". ");
        text.push_str(description);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_named_and_numeric() {
        assert_eq!(
            unescape_html("a &amp; b &quot;c&quot; &#39;d&#x27; &lt;&gt;&apos;"),
            "a & b \"c\" 'd' <>'"
        );
        assert_eq!(unescape_html("Ojon&#153; &#9733;"), "Ojon™ ★");
        assert_eq!(unescape_html("&amp;lt;"), "&lt;");
    }

    #[test]
    fn leaves_unknown_entities() {
        assert_eq!(unescape_html("AT&T & co &bogus; &"), "AT&T & co &bogus; &");
        assert_eq!(unescape_html("&#0; &#xZZ;"), "&#0; &#xZZ;");
    }

    #[test]
    fn cleans_whitespace() {
        assert_eq!(clean("  Cream \nVanilla&nbsp;2 oz "), "Cream Vanilla 2 oz");
    }

    #[test]
    fn template_parts() {
        assert_eq!(item_text("T", "A,B", None, None), "T. Categories: A,B");
        assert_eq!(
            item_text("T", "A", Some("X"), Some("Good.")),
            "T. Categories: A. Brand: X. Good."
        );
    }
}
