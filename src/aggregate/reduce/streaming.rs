//! Streaming mode's state: one open bucket, written as soon as a later bucket starts.
//! Constructed by [`super::pass`] for [`Mode::Streaming`](super::super::Mode), whose row
//! loop feeds it through [`Buckets`]. Memory is constant, whatever the span.

use super::super::AggregateError;
use super::super::acc::Acc;
use super::super::output;
use super::super::time::Grid;
use super::header::Layout;
use super::{Buckets, Out, PassEnd};

pub(super) struct Streaming<'s> {
    out: Out<'s>,
    /// The open bucket's key (`None` before the first row).
    current: Option<i64>,
    /// The first row's key, for the `--max-buckets` span.
    first_key: i64,
    open: Vec<Acc>,
    /// The stats of an empty bucket (for the gaps).
    blank: Vec<Acc>,
    limit: usize,
    buckets: u64,
    /// Whether the layout lets the fast lane run (and it is not switched off for a test).
    fast: bool,
}

impl<'s> Streaming<'s> {
    /// Writes the output header at once: streaming output never changes its mind.
    pub fn new(mut out: Out<'s>, layout: &Layout, limit: usize) -> Self {
        output::push_header(&mut out.buf, &layout.time_name, &layout.value_names);
        let n_cols = layout.value_idx.len();
        Streaming {
            out,
            current: None,
            first_key: 0,
            open: vec![Acc::default(); n_cols],
            blank: vec![Acc::default(); n_cols],
            limit,
            buckets: 0,
            fast: layout.is_time_value() && super::lane::enabled(),
        }
    }

    /// Closes the open bucket `from`, writes the empty ones before `to` and opens `to`.
    fn advance(&mut self, grid: &Grid, from: i64, to: i64) -> Result<(), AggregateError> {
        let reached = to.abs_diff(self.first_key) + 1;
        if reached > self.limit as u64 {
            return Err(AggregateError::TooManyBuckets {
                limit: self.limit,
                reached,
            });
        }
        self.out.emit(grid, from, &self.open)?;
        self.open.fill(Acc::default());
        for empty in from + 1..to {
            self.out.emit(grid, empty, &self.blank)?;
        }
        self.buckets += (to - from) as u64;
        self.current = Some(to);
        Ok(())
    }
}

impl Buckets for Streaming<'_> {
    type Lane<'l>
        = &'l mut Acc
    where
        Self: 'l;

    #[inline]
    fn add(
        &mut self,
        grid: &Grid,
        _t: i64,
        key: i64,
        values: &[f64],
    ) -> Result<Option<PassEnd>, AggregateError> {
        match self.current {
            Some(k) if k == key => {}
            Some(k) if key > k => self.advance(grid, k, key)?,
            Some(_) => return Ok(Some(PassEnd::OutOfOrder)),
            None => {
                self.first_key = key;
                self.current = Some(key);
            }
        }
        Acc::push_row(&mut self.open, values);
        Ok(None)
    }

    /// The open bucket, when it is `key`'s.
    #[inline(always)]
    fn lane(&mut self, key: i64) -> Option<&mut Acc> {
        if self.fast && self.current == Some(key) {
            Some(&mut self.open[0])
        } else {
            None
        }
    }

    fn finish(mut self, grid: Option<Grid>) -> Result<(PassEnd, u64), AggregateError> {
        if let (Some(grid), Some(k)) = (grid, self.current) {
            self.out.emit(&grid, k, &self.open)?;
            self.buckets += 1;
        }
        self.out.finish()?;
        Ok((PassEnd::Done, self.buckets))
    }
}
