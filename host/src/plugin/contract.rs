//! Which contract a component was built against, read from its bytes before anything is compiled
//! or instantiated, and whether this host can run it.

use std::fmt;

use wasmparser::{Encoding, Parser, Payload};

/// A contract version `MAJOR.MINOR.PATCH`. Pre-release and build suffixes are not used by the
/// contract and are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Version {
    pub const fn new(major: u64, minor: u64, patch: u64) -> Self {
        Version { major, minor, patch }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('.').collect();
        let num = |s: &str| s.parse::<u64>().map_err(|_| format!("{text:?} is not MAJOR.MINOR.PATCH"));
        match parts.as_slice() {
            [a, b, c] => Ok(Version::new(num(a)?, num(b)?, num(c)?)),
            _ => Err(format!("{text:?} is not MAJOR.MINOR.PATCH")),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The interfaces a provider must export, by unversioned name.
const EXPORTED: [&str; 3] = ["vk:provider/metadata", "vk:provider/node", "vk:provider/pods"];

/// What reading the component's outer export section found.
#[derive(Debug, Clone, PartialEq)]
pub enum Contract {
    /// All three provider interfaces are exported at this version.
    Version(Version),
    /// The bytes are a core module or not WebAssembly at all.
    NotAComponent(String),
    /// A component, but it does not export the provider interfaces (consistently).
    NoProviderExports(String),
}

/// Reads the `vk:provider/{metadata,node,pods}@X.Y.Z` exports of the outermost component.
pub fn read(bytes: &[u8]) -> Contract {
    let mut depth = 0usize;
    let mut versions: Vec<(String, Version)> = Vec::new();
    let mut exports_seen: Vec<String> = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = match payload {
            Ok(p) => p,
            Err(e) if depth == 0 && versions.is_empty() && exports_seen.is_empty() => {
                return Contract::NotAComponent(format!("not a WebAssembly binary: {e}"));
            }
            Err(e) => return Contract::NoProviderExports(format!("malformed component: {e}")),
        };
        match payload {
            Payload::Version { encoding: Encoding::Module, .. } if depth == 0 => {
                return Contract::NotAComponent(
                    "a core WebAssembly module, not a component: build with `--target wasm32-wasip2`".into(),
                );
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    let export = match export {
                        Ok(e) => e,
                        Err(e) => return Contract::NoProviderExports(format!("malformed export section: {e}")),
                    };
                    let name = export.name.name;
                    exports_seen.push(name.to_owned());
                    if let Some((iface, ver)) = name.split_once('@')
                        && EXPORTED.contains(&iface)
                    {
                        match Version::parse(ver) {
                            Ok(v) => versions.push((iface.to_owned(), v)),
                            Err(e) => return Contract::NoProviderExports(format!("export {name}: bad version: {e}")),
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let missing: Vec<&str> = EXPORTED.iter().copied().filter(|i| !versions.iter().any(|(name, _)| name == i)).collect();
    if !missing.is_empty() {
        return Contract::NoProviderExports(format!(
            "does not export {} (exports: {})",
            missing.join(", "),
            if exports_seen.is_empty() { "none".to_owned() } else { exports_seen.join(", ") }
        ));
    }
    let first = versions[0].1;
    if let Some((iface, v)) = versions.iter().find(|(_, v)| *v != first) {
        return Contract::NoProviderExports(format!(
            "exports mixed contract versions: {}@{} and {iface}@{v}",
            versions[0].0, first
        ));
    }
    Contract::Version(first)
}

/// The version policy: semver, where for 0.x a minor bump is a break. A host contract serves a
/// plugin of the same line (0.x: the same minor; otherwise the same major) that is not newer than
/// it: a newer plugin may import or export what the host does not have, so it is refused up front
/// rather than failing to link.
pub fn compatible(host: &Version, plugin: &Version) -> bool {
    let same_line =
        if host.major == 0 { plugin.major == 0 && plugin.minor == host.minor } else { plugin.major == host.major };
    same_line && plugin <= host
}

/// The contract among `host` (the host's, any order) that serves a plugin built against `plugin`.
pub fn serving(host: &[Version], plugin: &Version) -> Option<Version> {
    host.iter().copied().find(|h| compatible(h, plugin))
}

/// What the host contracts accept, for refusals: `0.2.0, 0.1.0 to 0.1.2`.
pub fn accepted(host: &[Version]) -> String {
    host.iter()
        .map(|h| {
            let first = if h.major == 0 { Version::new(0, h.minor, 0) } else { Version::new(h.major, 0, 0) };
            if first == *h { h.to_string() } else { format!("{first} to {h}") }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_versions_only() {
        assert_eq!(Version::parse("0.1.0").unwrap(), Version::new(0, 1, 0));
        assert_eq!(Version::parse("12.3.45").unwrap().to_string(), "12.3.45");
        assert!(Version::parse("0.1").is_err());
        assert!(Version::parse("0.1.0-rc1").is_err());
    }

    #[test]
    fn older_patch_releases_of_a_0_x_line_are_compatible_and_newer_or_other_lines_are_not() {
        let host = Version::new(0, 1, 2);
        assert!(compatible(&host, &Version::new(0, 1, 0)));
        assert!(compatible(&host, &Version::new(0, 1, 2)));
        assert!(!compatible(&host, &Version::new(0, 1, 3)), "a newer patch may use what the host lacks");
        assert!(!compatible(&host, &Version::new(0, 2, 0)));
        assert!(!compatible(&host, &Version::new(0, 0, 9)));
        assert!(!compatible(&host, &Version::new(1, 1, 0)));
        assert!(compatible(&Version::new(1, 2, 0), &Version::new(1, 1, 0)));
        assert!(!compatible(&Version::new(1, 2, 0), &Version::new(1, 3, 0)));
        assert!(!compatible(&Version::new(1, 2, 0), &Version::new(1, 2, 1)));
    }

    #[test]
    fn each_plugin_is_served_by_the_host_contract_of_its_line_and_a_newer_one_by_none() {
        let host = [Version::new(0, 2, 0), Version::new(0, 1, 2)];
        let serving = |v: &str| serving(&host, &Version::parse(v).unwrap());
        assert_eq!(serving("0.1.0"), Some(Version::new(0, 1, 2)));
        assert_eq!(serving("0.1.1"), Some(Version::new(0, 1, 2)));
        assert_eq!(serving("0.1.2"), Some(Version::new(0, 1, 2)));
        assert_eq!(serving("0.2.0"), Some(Version::new(0, 2, 0)));
        for newer in ["0.1.3", "0.2.1", "0.3.0", "1.0.0"] {
            assert_eq!(serving(newer), None, "{newer}");
        }
        assert_eq!(accepted(&host), "0.2.0, 0.1.0 to 0.1.2");
    }

    #[test]
    fn text_and_core_modules_are_not_components() {
        assert!(matches!(read(b"hello"), Contract::NotAComponent(_)));
        let core_module = b"\0asm\x01\0\0\0";
        match read(core_module) {
            Contract::NotAComponent(msg) => assert!(msg.contains("core WebAssembly module"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_empty_component_has_no_provider_exports() {
        let empty_component = b"\0asm\x0d\0\x01\0";
        assert!(matches!(read(empty_component), Contract::NoProviderExports(_)));
    }
}
