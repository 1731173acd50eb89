//! A deterministic CSV of mixed columns for the memory measurements
//! (`cargo bench --bench jail`, `csv-agent sandbox mixed-csv`): the same rows
//! on every machine for the same row count.
//!
//! Twelve columns, one of each kind a real table has: integers (`order_id`),
//! integers with gaps (`quantity`, 4 % missing, so pandas reads it as
//! float), floats with and without missing values (`price`, `discount`,
//! `revenue`, `rating`), low-cardinality categories (`store`, `region`,
//! `channel`), dates (`day`), booleans (`returned`, true/false) and free text
//! (`note`, a few words out of a small vocabulary plus a number, 30 %
//! missing).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Bumped whenever the generated content changes (part of the file name).
pub const MIXED_CSV_VERSION: u32 = 2;

/// Rows of the "typical analysis table" size used by the memory targets.
pub const MIXED_CSV_ROWS: usize = 20_000;

const HEADER: &str =
    "order_id,day,store,region,channel,price,quantity,discount,revenue,rating,returned,note";

const REGIONS: [&str; 12] = [
    "north", "south", "east", "west", "central", "coast", "alps", "delta", "plains", "islands",
    "valley", "lakes",
];
const CHANNELS: [&str; 3] = ["web", "store", "phone"];
const WORDS: [&str; 32] = [
    "late", "gift", "bulk", "promo", "repeat", "damaged", "express", "weekend", "loyalty",
    "return", "coupon", "new", "vip", "sample", "urgent", "quiet", "box", "fragile", "signed",
    "left", "door", "call", "first", "order", "wrong", "size", "colour", "early", "missing",
    "part", "refund", "thanks",
];

/// The file name the generator uses for `rows` rows.
pub fn mixed_csv_name(rows: usize) -> String {
    format!("mixed-{rows}-v{MIXED_CSV_VERSION}.csv")
}

/// Write the whole CSV (header and `rows` rows) to `out`.
pub fn write_mixed_csv(out: &mut impl Write, rows: usize) -> io::Result<()> {
    let mut rng = SplitMix(0x05ee_dc5a_9e47);
    writeln!(out, "{HEADER}")?;
    for id in 0..rows {
        let day = 1 + rng.below(365);
        let (month, dom) = month_day(day as u32);
        let store = rng.below(40);
        let region = REGIONS[rng.below(REGIONS.len() as u64) as usize];
        let channel = CHANNELS[rng.below(CHANNELS.len() as u64) as usize];
        let price = 2.0 + rng.unit() * 300.0;
        let quantity = 1 + rng.below(20);
        let discount = (rng.unit() * 30.0).round() / 100.0;
        let revenue = price * quantity as f64 * (1.0 - discount);
        let price_s = optional(&mut rng, 0.02, || format!("{price:.2}"));
        let quantity_s = optional(&mut rng, 0.04, || quantity.to_string());
        let discount_s = optional(&mut rng, 0.05, || format!("{discount:.2}"));
        let rating = 1.0 + rng.unit() * 4.0;
        let rating_s = optional(&mut rng, 0.10, || format!("{rating:.1}"));
        let returned = if rng.unit() < 0.07 { "true" } else { "false" };
        let words = 2 + rng.below(4) as usize;
        let mut note = String::new();
        for _ in 0..words {
            note.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
            note.push(' ');
        }
        note.push_str(&rng.below(1000).to_string());
        let note = optional(&mut rng, 0.30, || note);
        writeln!(
            out,
            "{id},2024-{month:02}-{dom:02},S{store:03},{region},{channel},{price_s},{quantity_s},{discount_s},{revenue:.2},{rating_s},{returned},{note}"
        )?;
    }
    Ok(())
}

/// Write `<dir>/mixed-<rows>-v<N>.csv` unless it is already there (written to
/// a temporary name, then renamed, so a half-written file is never used), and
/// make it readable by every uid (the jail reads it unprivileged).
pub fn ensure_mixed_csv(dir: &Path, rows: usize) -> io::Result<PathBuf> {
    let path = dir.join(mixed_csv_name(rows));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    let partial = dir.join(format!("{}.partial", mixed_csv_name(rows)));
    let mut out = io::BufWriter::new(std::fs::File::create(&partial)?);
    write_mixed_csv(&mut out, rows)?;
    out.flush()?;
    drop(out);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

fn optional(rng: &mut SplitMix, missing: f64, value: impl FnOnce() -> String) -> String {
    if rng.unit() < missing {
        String::new()
    } else {
        value()
    }
}

fn month_day(day_of_year: u32) -> (u32, u32) {
    const DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut d = day_of_year;
    for (m, &len) in DAYS.iter().enumerate() {
        if d <= len {
            return (m as u32 + 1, d);
        }
        d -= len;
    }
    (12, 31)
}

/// splitmix64: a fixed seed gives the same file on every machine.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_rows_every_time_with_twelve_columns() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_mixed_csv(&mut a, 500).expect("write");
        write_mixed_csv(&mut b, 500).expect("write");
        assert_eq!(a, b);
        let text = String::from_utf8(a).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 501);
        for line in &lines {
            assert_eq!(line.split(',').count(), 12, "{line}");
        }
        // Some values of every optional column are missing.
        for column in [5, 6, 7, 9, 11] {
            assert!(
                lines[1..]
                    .iter()
                    .any(|l| l.split(',').nth(column) == Some("")),
                "column {column} has gaps"
            );
        }
    }

    #[test]
    fn a_prefix_of_a_longer_file() {
        let mut short = Vec::new();
        let mut long = Vec::new();
        write_mixed_csv(&mut short, 10).expect("write");
        write_mixed_csv(&mut long, 20).expect("write");
        assert!(long.starts_with(&short));
    }
}
