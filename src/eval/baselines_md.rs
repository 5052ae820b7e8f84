//! The baselines' markdown (`eval/baselines-*.md` and the pipeline report's rows): the rows,
//! their popularity slices, the model minus each baseline, and the model minus SASRec per
//! slice, or the line saying the run has no SASRec.

use super::baselines::{Against, BaselineReport, NO_SASREC, SASREC_ROW};
use super::paired::MARKDOWN_HEADER;
use super::slices::{diff_markdown, slices_table};

impl BaselineReport {
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "# Baselines: {} ({} split, {} users{})\n\n",
            self.dataset,
            self.split.name(),
            self.users,
            self.limit.map_or(String::new(), |_| format!(
                ", seeded sample, seed {}",
                self.seed
            ))
        );
        if let Some((_, m)) = self.rows.first() {
            let head = m.markdown_header();
            let mut lines = head.lines();
            let (names, rule) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
            md.push_str(&format!("| baseline {names}\n| --- {rule}\n"));
        }
        for (name, m) in &self.rows {
            md.push_str(&format!("| {name} {}\n", m.to_markdown_row()));
        }
        md.push_str(&match &self.sasrec {
            Some(p) => format!("\n{SASREC_ROW}: `{p}`, ranking every item after the same capped histories (history items included, as the evaluation's beam).\n"),
            None => format!("\n{NO_SASREC}\n"),
        });
        if !self.slices.is_empty() {
            let named: Vec<(&str, &[_])> = self
                .rows
                .iter()
                .zip(&self.slices)
                .map(|((n, _), s)| (n.as_str(), s.as_slice()))
                .collect();
            md.push_str(&format!(
                "\nBy the target's training popularity (head / torso / tail: a third of the training interactions each; rare: at most {} training interactions):\n\n{}",
                super::slices::RARE_MAX,
                slices_table(&named)
            ));
        }
        if let Some(a) = &self.against {
            md.push_str(&format!(
                "\nThe model of `{}` minus each baseline, user by user (paired standard errors):\n\n{}",
                a.predictions, a.paired_markdown()
            ));
            md.push_str(&self.sasrec_diff_markdown(a).unwrap_or_default());
        }
        md
    }

    /// The model of `a` minus SASRec per popularity slice; None without a SASRec row.
    pub fn sasrec_diff_markdown(&self, a: &Against) -> Option<String> {
        self.sasrec.as_ref()?;
        let i = self.rows.iter().position(|(n, _)| n == SASREC_ROW)?;
        let (base, diffs) = (self.slices.get(i)?, a.slices.get(i)?);
        Some(format!("\n{}", diff_markdown(SASREC_ROW, base, diffs)))
    }
}

impl Against {
    /// The paired table, one row a baseline.
    pub fn paired_markdown(&self) -> String {
        let mut md = MARKDOWN_HEADER.to_string();
        for r in &self.rows {
            md.push_str(&r.markdown_row());
            md.push('\n');
        }
        md
    }
}
