//! Pod sizes (P2): Cube sells a fixed table of CPU/memory sizes. A pod's effective requests are
//! rounded up to the smallest size covering both, and the size is split into per-container limits
//! whose total is exactly the size.

use std::fmt;

use crate::error::InvalidInput;
use vk_provider_sdk::Event;

const MI: u64 = 1024 * 1024;

/// A Cube size: CPU in millicores, memory in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size {
    pub cpu_millis: u64,
    pub memory_mib: u64,
}

/// The sizes Cube accepts, smallest first (by CPU, then memory).
pub const SIZES: [Size; 14] = [
    Size { cpu_millis: 500, memory_mib: 512 },
    Size { cpu_millis: 500, memory_mib: 1024 },
    Size { cpu_millis: 500, memory_mib: 2048 },
    Size { cpu_millis: 1000, memory_mib: 1024 },
    Size { cpu_millis: 1000, memory_mib: 2048 },
    Size { cpu_millis: 1000, memory_mib: 4096 },
    Size { cpu_millis: 2000, memory_mib: 2048 },
    Size { cpu_millis: 2000, memory_mib: 4096 },
    Size { cpu_millis: 2000, memory_mib: 8192 },
    Size { cpu_millis: 4000, memory_mib: 4096 },
    Size { cpu_millis: 4000, memory_mib: 8192 },
    Size { cpu_millis: 4000, memory_mib: 16384 },
    Size { cpu_millis: 8000, memory_mib: 8192 },
    Size { cpu_millis: 8000, memory_mib: 16384 },
];

/// The largest size, used for the node's capacity.
pub const LARGEST: Size = SIZES[SIZES.len() - 1];

impl Size {
    pub fn cpu(&self) -> String {
        format_cpu(self.cpu_millis)
    }
    pub fn memory(&self) -> String {
        format_memory(self.memory_mib * MI)
    }
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib * MI
    }
    pub fn is_in_table(&self) -> bool {
        SIZES.contains(self)
    }
    /// Parses a size given as two Kubernetes quantities (the node's `default_size`).
    pub fn from_quantities(cpu: &str, memory: &str) -> Option<Size> {
        let cpu_millis = parse_cpu_millis(cpu)?;
        let bytes = parse_memory_bytes(memory)?;
        (bytes.is_multiple_of(MI)).then_some(Size { cpu_millis, memory_mib: bytes / MI })
    }
    /// The table as people read it: `500m/512Mi, 500m/1Gi, …`.
    pub fn table() -> String {
        SIZES.iter().map(|s| format!("{}/{}", s.cpu(), s.memory())).collect::<Vec<_>>().join(", ")
    }
}

/// Rendered as in the `cube.ucloud.cn/size` annotation: `1-2Gi`, `500m-512Mi`.
impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.cpu(), self.memory())
    }
}

/// CPU as Kubernetes writes it: whole cores plain, else millicores.
pub fn format_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) { format!("{}", millis / 1000) } else { format!("{millis}m") }
}

/// Memory in the largest binary unit that divides it exactly.
pub fn format_memory(bytes: u64) -> String {
    const GI: u64 = 1024 * MI;
    if bytes > 0 && bytes.is_multiple_of(GI) {
        format!("{}Gi", bytes / GI)
    } else if bytes > 0 && bytes.is_multiple_of(MI) {
        format!("{}Mi", bytes / MI)
    } else if bytes > 0 && bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        format!("{bytes}")
    }
}

/// Parses a Kubernetes quantity into thousandths of its unit, rounding up (`1.5Gi`, `500m`, `2`,
/// `1e3`). None when it is not a quantity.
pub fn parse_milli(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let (num, den): (u128, u128) = parse_decimal(number)?;
    // (multiplier numerator, denominator) of the suffix.
    let (mul, div): (u128, u128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().ok()?;
            (10u128.checked_pow(exp)?, 1)
        }
        _ => return None,
    };
    let top = num.checked_mul(mul)?.checked_mul(1000)?;
    let bottom = den * div;
    Some(top.div_ceil(bottom))
}

fn parse_decimal(s: &str) -> Option<(u128, u128)> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.is_empty() || s == "." {
        return None;
    }
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) || frac.len() > 18 {
        return None;
    }
    let digits = format!("{int}{frac}");
    Some((digits.parse().ok()?, 10u128.pow(frac.len() as u32)))
}

pub fn parse_cpu_millis(q: &str) -> Option<u64> {
    parse_milli(q).and_then(|m| u64::try_from(m).ok())
}

pub fn parse_memory_bytes(q: &str) -> Option<u64> {
    parse_milli(q).and_then(|m| u64::try_from(m.div_ceil(1000)).ok())
}

/// CPU and memory one container asks for (requests, or limits where requests are absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// The pod's effective demand as Kubernetes computes it: the sum over containers, or the largest
/// init container when that is larger, per resource.
pub fn effective_demand(containers: &[Demand], init_containers: &[Demand]) -> Demand {
    let sum = containers.iter().fold(Demand::default(), |a, d| Demand {
        cpu_millis: a.cpu_millis + d.cpu_millis,
        memory_bytes: a.memory_bytes + d.memory_bytes,
    });
    init_containers.iter().fold(sum, |a, d| Demand {
        cpu_millis: a.cpu_millis.max(d.cpu_millis),
        memory_bytes: a.memory_bytes.max(d.memory_bytes),
    })
}

/// The size chosen for a pod, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeChoice {
    pub size: Size,
    pub event: Option<Event>,
}

/// Picks the smallest size covering the demand, the node's default when the pod asks for nothing.
pub fn choose_size(demand: Demand, default: Size) -> Result<SizeChoice, InvalidInput> {
    if demand == Demand::default() {
        return Ok(SizeChoice {
            size: default,
            event: Some(Event::normal(
                "DefaultSize",
                format!("pod sets no CPU or memory requests; using the node's default size {default}"),
            )),
        });
    }
    let Some(size) =
        SIZES.iter().find(|s| s.cpu_millis >= demand.cpu_millis && s.memory_bytes() >= demand.memory_bytes)
    else {
        return Err(InvalidInput::new(
            "PodTooLarge",
            "spec.containers[*].resources.requests",
            format!(
                "the pod requests cpu {} and memory {}, more than the largest Cube size {} (sizes: {})",
                format_cpu(demand.cpu_millis),
                format_memory(demand.memory_bytes),
                LARGEST,
                Size::table()
            ),
        ));
    };
    let exact = size.cpu_millis == demand.cpu_millis && size.memory_bytes() == demand.memory_bytes;
    let event = (!exact).then(|| {
        Event::normal(
            "SizeRounded",
            format!(
                "pod requests cpu {} and memory {}; rounded up to the Cube size {size} (cpu {}, memory {})",
                format_cpu(demand.cpu_millis),
                format_memory(demand.memory_bytes),
                size.cpu(),
                size.memory()
            ),
        )
    });
    Ok(SizeChoice { size: *size, event })
}

/// Splits a size into container limits whose total is exactly the size: each container gets its own
/// demand, the remainder is shared by the containers that asked for nothing (or goes to the first).
/// Init containers run alone, so each may use the whole size.
pub fn distribute(size: Size, containers: &[Demand]) -> Vec<Demand> {
    let total = Demand { cpu_millis: size.cpu_millis, memory_bytes: size.memory_bytes() };
    let cpu: Vec<u64> = containers.iter().map(|d| d.cpu_millis).collect();
    let mem: Vec<u64> = containers.iter().map(|d| d.memory_bytes).collect();
    let cpu = split(total.cpu_millis, &cpu, 1);
    let mem = split(total.memory_bytes, &mem, MI);
    cpu.into_iter().zip(mem).map(|(cpu_millis, memory_bytes)| Demand { cpu_millis, memory_bytes }).collect()
}

/// Splits `total` along `asked`; shares given to containers that asked for nothing are multiples of
/// `unit` where possible. Every container gets something when the total allows it.
fn split(total: u64, asked: &[u64], unit: u64) -> Vec<u64> {
    if asked.is_empty() {
        return vec![];
    }
    let mut out: Vec<u64> = asked.to_vec();
    let given: u64 = out.iter().sum();
    let remainder = total.saturating_sub(given);
    let idle: Vec<usize> = (0..out.len()).filter(|&i| out[i] == 0).collect();
    if idle.is_empty() {
        out[0] += remainder;
    } else {
        let units = remainder / unit;
        let share = units / idle.len() as u64 * unit;
        for &i in &idle {
            out[i] = share;
        }
        out[idle[0]] += remainder - share * idle.len() as u64;
    }
    out
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // tables of cases
mod tests {
    use super::*;

    fn d(cpu: &str, mem: &str) -> Demand {
        Demand { cpu_millis: parse_cpu_millis(cpu).unwrap(), memory_bytes: parse_memory_bytes(mem).unwrap() }
    }

    #[test]
    fn parses_kubernetes_quantities() {
        let cases: &[(&str, Option<u128>)] = &[
            ("500m", Some(500)),
            ("1", Some(1000)),
            ("0.5", Some(500)),
            ("2", Some(2000)),
            ("1.5", Some(1500)),
            ("250m", Some(250)),
            ("1m", Some(1)),
            ("0.0001", Some(1)),
            ("1Ki", Some(1024 * 1000)),
            ("512Mi", Some(512 * (1 << 20) * 1000)),
            ("1G", Some(1_000_000_000_000)),
            ("1e3", Some(1_000_000)),
            ("+3", Some(3000)),
            ("", None),
            ("abc", None),
            ("1Xi", None),
            ("1.2.3", None),
        ];
        for (q, want) in cases {
            assert_eq!(parse_milli(q), *want, "quantity {q:?}");
        }
        assert_eq!(parse_memory_bytes("2048Mi"), Some(2 << 30));
        assert_eq!(parse_memory_bytes("1.5Gi"), Some(3 << 29));
    }

    #[test]
    fn rounds_up_to_the_smallest_covering_size() {
        let default = Size { cpu_millis: 1000, memory_mib: 2048 };
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            // cpu, memory, size, event reason
            ("500m", "512Mi", "500m-512Mi", None),
            ("2", "2048Mi", "2-2Gi", None),
            ("100m", "64Mi", "500m-512Mi", Some("SizeRounded")),
            ("600m", "512Mi", "1-1Gi", Some("SizeRounded")),
            ("500m", "3Gi", "1-4Gi", Some("SizeRounded")),
            ("1", "5Gi", "2-8Gi", Some("SizeRounded")),
            ("3", "1Gi", "4-4Gi", Some("SizeRounded")),
            ("8", "16Gi", "8-16Gi", None),
            ("0", "9Gi", "4-16Gi", Some("SizeRounded")),
            ("1", "1G", "1-1Gi", Some("SizeRounded")),
            ("0", "0", "1-2Gi", Some("DefaultSize")),
        ];
        for (cpu, mem, want, reason) in cases {
            let got = choose_size(d(cpu, mem), default).unwrap();
            assert_eq!(got.size.to_string(), *want, "cpu {cpu} memory {mem}");
            assert_eq!(got.event.as_ref().map(|e| e.reason.as_str()), *reason, "cpu {cpu} memory {mem}");
        }
    }

    #[test]
    fn refuses_a_pod_larger_than_every_size() {
        let default = Size { cpu_millis: 1000, memory_mib: 2048 };
        for (cpu, mem) in [("9", "1Gi"), ("1", "17Gi"), ("16", "32Gi")] {
            let err = choose_size(d(cpu, mem), default).unwrap_err();
            assert_eq!(err.reason, "PodTooLarge");
            assert!(err.message.contains("8-16Gi"), "{}", err.message);
        }
    }

    #[test]
    fn effective_demand_is_sum_of_containers_or_largest_init() {
        let cases: &[(&[(&str, &str)], &[(&str, &str)], (&str, &str))] = &[
            (&[("1", "1Gi"), ("500m", "512Mi")], &[], ("1500m", "1536Mi")),
            (&[("1", "1Gi")], &[("2", "512Mi")], ("2", "1Gi")),
            (&[("1", "1Gi")], &[("500m", "4Gi"), ("3", "1Gi")], ("3", "4Gi")),
        ];
        for (cs, is, (cpu, mem)) in cases {
            let cs: Vec<_> = cs.iter().map(|(c, m)| d(c, m)).collect();
            let is: Vec<_> = is.iter().map(|(c, m)| d(c, m)).collect();
            assert_eq!(effective_demand(&cs, &is), d(cpu, mem));
        }
    }

    #[test]
    fn distributes_the_size_so_the_pod_total_is_exact() {
        let size = Size { cpu_millis: 2000, memory_mib: 4096 };
        let cases: &[(&[(&str, &str)], &[(&str, &str)])] = &[
            (&[("1", "1Gi")], &[("2", "4Gi")]),
            (&[("1", "1Gi"), ("500m", "512Mi")], &[("1500m", "3584Mi"), ("500m", "512Mi")]),
            (&[("0", "0"), ("0", "0")], &[("1", "2Gi"), ("1", "2Gi")]),
            (&[("0", "0"), ("0", "0"), ("0", "0")], &[("668m", "1366Mi"), ("666m", "1365Mi"), ("666m", "1365Mi")]),
            (&[("1", "1Gi"), ("0", "0")], &[("1", "1Gi"), ("1", "3Gi")]),
        ];
        for (asked, want) in cases {
            let asked: Vec<_> = asked.iter().map(|(c, m)| d(c, m)).collect();
            let got = distribute(size, &asked);
            let want: Vec<_> = want.iter().map(|(c, m)| d(c, m)).collect();
            assert_eq!(got, want);
            assert_eq!(got.iter().map(|x| x.cpu_millis).sum::<u64>(), 2000);
            assert_eq!(got.iter().map(|x| x.memory_bytes).sum::<u64>(), 4096 * MI);
        }
    }

    #[test]
    fn renders_sizes_like_the_guide() {
        assert_eq!(SIZES[0].to_string(), "500m-512Mi");
        assert_eq!(Size::from_quantities("1", "2Gi"), Some(Size { cpu_millis: 1000, memory_mib: 2048 }));
        assert_eq!(Size::from_quantities("1", "2048Mi").unwrap().to_string(), "1-2Gi");
        assert!(!Size::from_quantities("3", "2Gi").unwrap().is_in_table());
    }
}
