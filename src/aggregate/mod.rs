//! The streaming roll-up reducer (placeholder until the reducer lands).
