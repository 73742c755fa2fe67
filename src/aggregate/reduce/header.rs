//! The header of a pass: reads the first non-blank record and finds the time and value
//! columns in it. Called once per pass by [`super::pass`], before any row.

use std::collections::HashSet;
use std::ops::Range;

use super::super::read::{self, Records};
use super::super::{AggregateError, Spec};

/// Where the time and value columns are.
pub(super) struct Layout {
    /// Fields in the header (a longer row is a bad row).
    pub n_fields: usize,
    pub time_idx: usize,
    pub value_idx: Vec<usize>,
    pub value_names: Vec<String>,
    /// The time column's name (echoed into the output header).
    pub time_name: String,
}

impl Layout {
    /// Whether rows have the plain `time,value` shape the fast lane parses.
    pub fn is_time_value(&self) -> bool {
        self.n_fields == 2 && self.time_idx == 0 && self.value_idx == [1]
    }
}

/// Reads the header (after a byte order mark and blank lines) and lays out its columns.
pub(super) fn read(spec: &Spec, records: &mut Records<'_>) -> Result<Layout, AggregateError> {
    records.skip_bom()?;
    let names = names(spec, records)?;
    layout(spec, &names)
}

/// The trimmed names of the first non-blank record.
fn names(spec: &Spec, records: &mut Records<'_>) -> Result<Vec<String>, AggregateError> {
    let mut fields: Vec<Range<usize>> = Vec::new();
    let rec = loop {
        match records.next_record()? {
            None => return Err(AggregateError::EmptyInput),
            Some(rec) if rec.bytes.is_empty() => {}
            Some(rec) => break rec,
        }
    };
    let backing = if rec.quoted {
        read::split_quoted(rec.bytes, spec.delimiter, &mut fields).map_err(|e| {
            AggregateError::Header(format!("line {}: cannot read the header: {e}", rec.line))
        })?
    } else {
        read::split_plain(rec.bytes, spec.delimiter, &mut fields);
        rec.bytes.to_vec()
    };
    // Names are echoed into the output header, so they must be text: a header that is
    // not UTF-8 (a Latin-1 export, a binary file) is refused rather than mangled.
    fields
        .iter()
        .map(|r| {
            std::str::from_utf8(read::trim(&backing[r.clone()]))
                .map(str::to_owned)
                .map_err(|_| {
                    AggregateError::Header(format!(
                        "line {}: the header is not valid UTF-8 (convert the file to UTF-8): {:?}",
                        rec.line,
                        String::from_utf8_lossy(rec.bytes)
                    ))
                })
        })
        .collect()
}

fn layout(spec: &Spec, names: &[String]) -> Result<Layout, AggregateError> {
    let err = |m: String| Err(AggregateError::Header(m));
    let listed = || listed(names);
    // A set, not a scan of the names before each one: a producer's header may hold
    // hundreds of thousands of columns within --max-line-bytes, and a pairwise check is
    // quadratic in them (100,000 columns took minutes of CPU before any row was read).
    let mut seen = HashSet::with_capacity(names.len());
    for n in names {
        if !seen.insert(n.as_str()) {
            return err(format!(
                "the header names column {n:?} twice (columns: {})",
                listed()
            ));
        }
    }
    let time_idx = match &spec.time_column {
        None => 0,
        Some(t) => match names.iter().position(|n| n == t) {
            Some(i) => i,
            None => {
                return err(format!(
                    "time column {t:?} (--time-column) is not in the header; columns: {}",
                    listed()
                ));
            }
        },
    };
    let value_idx = match &spec.columns {
        None => (0..names.len()).filter(|&i| i != time_idx).collect(),
        Some(cols) => chosen_columns(names, time_idx, cols)?,
    };
    if value_idx.is_empty() {
        return err(format!(
            "no value column: the header has only the time column {:?}",
            names[time_idx]
        ));
    }
    let value_names = value_idx.iter().map(|&i| names[i].clone()).collect();
    Ok(Layout {
        n_fields: names.len(),
        time_idx,
        value_idx,
        value_names,
        time_name: names[time_idx].clone(),
    })
}

/// The header's names for an error text, at most [`LISTED_NAMES`] of them: a header of
/// 100,000 columns must not become a 700 KB error (it reaches the log and the poison note).
fn listed(names: &[String]) -> String {
    let shown = names[..names.len().min(LISTED_NAMES)].join(", ");
    match names.len().checked_sub(LISTED_NAMES) {
        Some(more) if more > 0 => format!("{shown}, … ({more} more)"),
        _ => shown,
    }
}

/// How many header names an error text lists.
const LISTED_NAMES: usize = 20;

/// The header positions of the `--columns` list, in its order.
fn chosen_columns(
    names: &[String],
    time_idx: usize,
    cols: &[String],
) -> Result<Vec<usize>, AggregateError> {
    let err = |m: String| Err(AggregateError::Header(m));
    let mut idx = Vec::new();
    for c in cols {
        match names.iter().position(|n| n == c) {
            Some(i) if i == time_idx => {
                return err(format!(
                    "column {c:?} is the time column; it cannot also be a value column (--columns)"
                ));
            }
            Some(i) if idx.contains(&i) => {
                return err(format!("column {c:?} is listed twice in --columns"));
            }
            Some(i) => idx.push(i),
            None => {
                return err(format!(
                    "column {c:?} (--columns) is not in the header; columns: {}",
                    listed(names)
                ));
            }
        }
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn duplicates_are_found_and_the_error_stays_short_in_a_wide_header() {
        let mut wide = names(100_000);
        wide.push("c99998".into());
        let Err(AggregateError::Header(e)) = layout(&Spec::default(), &wide) else {
            panic!("a duplicate name was not found");
        };
        assert!(e.contains("\"c99998\" twice"), "{e}");
        assert!(e.contains("(99981 more)"), "{e}");
        assert!(e.len() < 1_000, "{} bytes", e.len());
        // A short header is listed whole.
        let short = ["t", "a", "a"].map(String::from);
        let Err(AggregateError::Header(e)) = layout(&Spec::default(), &short) else {
            panic!("a duplicate name was not found");
        };
        assert!(e.ends_with("(columns: t, a, a)"), "{e}");
        // Distinct names pass.
        assert_eq!(
            layout(&Spec::default(), &names(100_000))
                .unwrap()
                .value_idx
                .len(),
            99_999
        );
    }
}
