//! Resource limits of a sandbox and its workers: the defaults, the values
//! derived from a dataset's size, and size parsing (`512M`, `2G`).

use std::time::Duration;

/// Resource limits of one sandbox and its workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Memory per worker (cgroup limit; address-space fallback without cgroups).
    pub memory_bytes: u64,
    /// Memory of the zygote's own group (imports + the loaded frame).
    pub zygote_memory_bytes: u64,
    /// Processes + threads per worker.
    pub pids: u64,
    /// Wall-clock limit per cell.
    pub cell_timeout: Duration,
    /// CPU seconds per worker (one task).
    pub cpu_seconds: u64,
    /// Bytes kept per output stream per cell.
    pub max_output_bytes: u64,
    pub tmp_bytes: u64,
    pub shm_bytes: u64,
    pub fsize_bytes: u64,
    pub nofile: u64,
    /// Jail-wide process backstop (RLIMIT_NPROC inside the user namespace).
    pub nproc: u64,
}

/// Per-worker memory and cell timeout a user chose (`--memory`,
/// `--cell-timeout`, or `[sandbox]` in csv-agent.toml); what is None is
/// derived from the dataset's size by [`Limits::for_dataset`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitChoice {
    pub memory_bytes: Option<u64>,
    pub cell_timeout: Option<Duration>,
}

/// The smallest per-worker memory limit accepted: the data stack alone
/// takes about 100 MiB of a worker's share.
pub const MIN_WORKER_MEMORY: u64 = 256 << 20;

impl Limits {
    /// The limits for a dataset whose CSV has `csv_bytes` bytes (the loaded
    /// frame is about that size for numeric data and up to a few times it
    /// for text). Per worker: 1 GiB, or 256 MiB + 6 × the CSV when that is
    /// more (a task's intermediates are copies of columns of the frame: a
    /// 205 MB CSV gets 1.4 GiB); the zygote's group: 4 GiB, or 8 × the
    /// CSV; the cell timeout: 60 s plus 30 s per 100 MB of CSV. A choice
    /// overrides its derived value.
    pub fn for_dataset(csv_bytes: u64, choice: LimitChoice) -> Limits {
        let base = Limits::default();
        let derived_memory = base
            .memory_bytes
            .max((256 << 20) + csv_bytes.saturating_mul(6));
        // Whole MiB, so the report reads cleanly.
        let derived_memory = derived_memory.div_ceil(1 << 20) << 20;
        let derived_timeout =
            base.cell_timeout + Duration::from_secs(csv_bytes.saturating_mul(30) / 100_000_000);
        let memory_bytes = choice.memory_bytes.unwrap_or(derived_memory);
        Limits {
            memory_bytes,
            zygote_memory_bytes: base
                .zygote_memory_bytes
                .max(csv_bytes.saturating_mul(8))
                .max(memory_bytes),
            cell_timeout: choice.cell_timeout.unwrap_or(derived_timeout),
            ..base
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 1 << 30,
            zygote_memory_bytes: 4 << 30,
            pids: 64,
            cell_timeout: Duration::from_secs(60),
            cpu_seconds: 900,
            max_output_bytes: 64 * 1024,
            tmp_bytes: 512 << 20,
            shm_bytes: 64 << 20,
            fsize_bytes: 512 << 20,
            nofile: 1024,
            nproc: 512,
        }
    }
}

/// Parse sizes like `512M`, `2G`, `1.5G`, `4096` (bytes), `64k`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size (use e.g. 512M or 2G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use K, M, G or T)"
            ))
        }
    };
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("size `{text}` must be positive"));
    }
    Ok((value * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_grow_with_the_dataset_and_choices_override_them() {
        let small = Limits::for_dataset(15_000, LimitChoice::default());
        assert_eq!(small, Limits::default());
        // The 205 MB CSV whose workers were OOM-killed at 1 GiB.
        let big = Limits::for_dataset(205_000_000, LimitChoice::default());
        assert_eq!(big.memory_bytes >> 20, 256 + 1173 + 1);
        assert_eq!(big.cell_timeout, Duration::from_secs(60 + 61));
        assert!(big.zygote_memory_bytes >= 4 << 30);
        let chosen = Limits::for_dataset(
            205_000_000,
            LimitChoice {
                memory_bytes: Some(3 << 30),
                cell_timeout: Some(Duration::from_secs(5)),
            },
        );
        assert_eq!(chosen.memory_bytes, 3 << 30);
        assert_eq!(chosen.cell_timeout, Duration::from_secs(5));
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("lots").is_err());
    }
}
