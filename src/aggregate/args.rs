//! The reducer's command-line flags (shared by `rollq aggregate` and `rollq worker`).

use super::{Bucket, Spec};

/// Reducer options; every flag also reads `ROLLQ_<FLAG>`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ReducerArgs {
    /// The time column [default: the first column].
    #[arg(long, env = "ROLLQ_TIME_COLUMN", value_name = "NAME")]
    pub time_column: Option<String>,

    /// Value columns, comma-separated [default: every column but the time column].
    #[arg(long, env = "ROLLQ_COLUMNS", value_name = "A,B", value_delimiter = ',')]
    pub columns: Option<Vec<String>>,

    /// Bucket width: 1m, 5m, 15m, 30m, 1h, 6h or 1d.
    #[arg(long, env = "ROLLQ_BUCKET", default_value = "1h")]
    pub bucket: String,

    /// Field delimiter of the input: one ASCII character, or `tab`.
    #[arg(long, env = "ROLLQ_DELIMITER", default_value = ",")]
    pub delimiter: String,

    /// A chrono strftime format for the time column (e.g. `%d/%m/%Y %H:%M`)
    /// [default: YYYY-MM-DD HH:MM:SS, ISO 8601 with `T`, fractions, `Z` and offsets].
    #[arg(long, env = "ROLLQ_TIME_FORMAT", value_name = "FORMAT")]
    pub time_format: Option<String>,

    /// IANA zone for bucket boundaries (e.g. local days); naive timestamps are read as local
    /// time in it, timestamps with an offset are converted.
    #[arg(
        long,
        env = "ROLLQ_TIMEZONE",
        default_value = "UTC",
        value_name = "NAME"
    )]
    pub timezone: String,

    /// Rows with an unparseable timestamp or value to skip (and count) before failing.
    #[arg(
        long,
        env = "ROLLQ_MAX_BAD_ROWS",
        default_value_t = 0,
        value_name = "N"
    )]
    pub max_bad_rows: u64,

    /// Most buckets from the first to the last row, empty ones included (bounds the output).
    #[arg(
        long,
        env = "ROLLQ_MAX_BUCKETS",
        default_value_t = 1_000_000,
        value_name = "N"
    )]
    pub max_buckets: usize,

    /// Most cells (buckets × value columns) held in memory at once when rows are out of order
    /// or the input is standard input (bounds holding mode's memory, about 48 bytes a cell).
    #[arg(
        long,
        env = "ROLLQ_MAX_HELD_CELLS",
        default_value_t = 1_000_000,
        value_name = "N"
    )]
    pub max_held_cells: usize,

    /// Longest input line in bytes (bounds the read buffer).
    #[arg(long, env = "ROLLQ_MAX_LINE_BYTES", default_value_t = 1 << 20, value_name = "N")]
    pub max_line_bytes: usize,
}

impl ReducerArgs {
    /// Validates the flags into a [`Spec`].
    pub fn to_spec(&self) -> Result<Spec, String> {
        let bucket: Bucket = self.bucket.parse()?;
        let delimiter = match self.delimiter.as_str() {
            "tab" | "\\t" | "\t" => b'\t',
            d if d.len() == 1 && d.is_ascii() && !matches!(d, "\"" | "\n" | "\r") => {
                d.as_bytes()[0]
            }
            d => {
                return Err(format!(
                    "--delimiter {d:?}: expected one ASCII character other than a quote or line break, or `tab`"
                ));
            }
        };
        let timezone: chrono_tz::Tz = self.timezone.parse().map_err(|_| {
            format!(
                "--timezone {:?}: not an IANA time zone name (e.g. Europe/Berlin, UTC)",
                self.timezone
            )
        })?;
        if let Some(f) = &self.time_format {
            use chrono::format::{Item, StrftimeItems};
            if StrftimeItems::new(f).any(|i| matches!(i, Item::Error)) {
                return Err(format!("--time-format {f:?}: not a valid strftime format"));
            }
        }
        if self.max_buckets == 0 {
            return Err("--max-buckets must be at least 1".into());
        }
        if self.max_held_cells == 0 {
            return Err("--max-held-cells must be at least 1".into());
        }
        if self.max_line_bytes == 0 {
            return Err("--max-line-bytes must be at least 1".into());
        }
        let columns = match &self.columns {
            Some(cols) => {
                let cols: Vec<String> = cols
                    .iter()
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect();
                if cols.is_empty() {
                    return Err("--columns names no column".into());
                }
                Some(cols)
            }
            None => None,
        };
        Ok(Spec {
            time_column: self.time_column.as_ref().map(|t| t.trim().to_string()),
            columns,
            bucket,
            delimiter,
            time_format: self.time_format.clone(),
            timezone,
            max_bad_rows: self.max_bad_rows,
            max_buckets: self.max_buckets,
            max_held_cells: self.max_held_cells,
            max_line_bytes: self.max_line_bytes,
        })
    }
}
