//! The `cube.ucloud.cn/` pod annotations (P3): billing, tag and EIP settings, their defaults and the
//! rules between them. A wrong value fails the pod; a misspelt name only warns, and so does a
//! setting the guide says takes no effect (不生效) where it is given: it is ignored, with a Warning.

use std::collections::BTreeMap;

use crate::error::InvalidInput;
use vk_provider_sdk::Event;

pub const PREFIX: &str = "cube.ucloud.cn/";
/// Annotations the provider itself sets on the pod; not user settings.
pub const SIZE: &str = "cube.ucloud.cn/size";
pub const EIP_ADDRESS: &str = "cube.ucloud.cn/eip-address";
pub const EIP_ID: &str = "cube.ucloud.cn/eip-id";

/// The twelve annotations a user may set, without the prefix.
pub const KNOWN: [&str; 12] = [
    "cube-tag",
    "cube-chargetype",
    "cube-quantity",
    "cube-eip",
    "cube-eip-id",
    "cube-eip-paymode",
    "cube-eip-share-bandwidth-id",
    "cube-eip-bandwidth",
    "cube-eip-chargetype",
    "cube-eip-quantity",
    "cube-eip-release",
    "cube-eip-security-group-id",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeType {
    Year,
    Month,
    Postpay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EipChargeType {
    Year,
    Month,
    Dynamic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayMode {
    Traffic,
    Bandwidth,
    ShareBandwidth,
}

impl ChargeType {
    /// The API value: the annotation value in upper camel case.
    pub fn api(self) -> &'static str {
        match self {
            ChargeType::Year => "Year",
            ChargeType::Month => "Month",
            ChargeType::Postpay => "Postpay",
        }
    }
}

impl EipChargeType {
    pub fn api(self) -> &'static str {
        match self {
            EipChargeType::Year => "Year",
            EipChargeType::Month => "Month",
            EipChargeType::Dynamic => "Dynamic",
        }
    }
}

impl PayMode {
    pub fn api(self) -> &'static str {
        match self {
            PayMode::Traffic => "Traffic",
            PayMode::Bandwidth => "Bandwidth",
            PayMode::ShareBandwidth => "ShareBandwidth",
        }
    }
}

/// What the user asked of the EIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EipSettings {
    /// An existing EIP to bind; none = allocate one.
    pub id: Option<String>,
    pub pay_mode: PayMode,
    pub share_bandwidth_id: Option<String>,
    pub bandwidth: u32,
    pub charge_type: EipChargeType,
    pub quantity: u32,
    pub release: bool,
    pub security_group_id: Option<String>,
}

/// The pod's Cube settings, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CubeSettings {
    pub tag: Option<String>,
    pub charge_type: ChargeType,
    pub quantity: u32,
    /// None when `cube-eip` is false.
    pub eip: Option<EipSettings>,
    /// Warnings for misspelt annotation names and for settings that take no effect.
    pub events: Vec<Event>,
}

fn field(name: &str) -> String {
    format!("metadata.annotations[{PREFIX}{name}]")
}

fn invalid(name: &str, value: &str, rule: impl std::fmt::Display) -> InvalidInput {
    InvalidInput::new("InvalidAnnotation", field(name), format!("annotation {PREFIX}{name} is {value:?}, but {rule}"))
}

/// Why a setting is ignored where it is given.
fn no_effect(name: &str, value: &str, why: &str) -> String {
    format!("annotation {PREFIX}{name} is {value:?}, but takes no effect and is ignored: {why}")
}

/// One Warning for every ignored setting: Events of one reason on one pod fold into one.
fn warn_ignored(events: &mut Vec<Event>, ignored: Vec<String>) {
    if !ignored.is_empty() {
        events.push(Event::warning("AnnotationHasNoEffect", ignored.join("; ")));
    }
}

struct Reader<'a> {
    annotations: &'a BTreeMap<String, String>,
}

impl Reader<'_> {
    fn raw(&self, name: &str) -> Option<&str> {
        self.annotations.get(&format!("{PREFIX}{name}")).map(|v| v.trim())
    }

    fn choice<T: Copy>(&self, name: &str, options: &[(&str, T)]) -> Result<Option<T>, InvalidInput> {
        let Some(v) = self.raw(name) else { return Ok(None) };
        options.iter().find(|(k, _)| *k == v).map(|(_, t)| Some(*t)).ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(k, _)| *k).collect();
            invalid(name, v, format!("must be one of {}", names.join(", ")))
        })
    }

    fn int(&self, name: &str) -> Result<Option<u32>, InvalidInput> {
        let Some(v) = self.raw(name) else { return Ok(None) };
        v.parse::<u32>().map(Some).map_err(|_| invalid(name, v, "must be a whole number (0 or more)"))
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, InvalidInput> {
        self.choice(name, &[("true", true), ("false", false)])
    }

    fn id(&self, name: &str, prefix: &str) -> Result<Option<String>, InvalidInput> {
        match self.raw(name) {
            None | Some("") => Ok(None),
            Some(v) if v.starts_with(prefix) && v.len() > prefix.len() => Ok(Some(v.to_string())),
            Some(v) => Err(invalid(name, v, format!("must be an id like {prefix}xxxxxxxx"))),
        }
    }
}

/// Reads the pod's `cube.ucloud.cn/` annotations, applying defaults and cross-field rules.
pub fn parse(annotations: &BTreeMap<String, String>) -> Result<CubeSettings, InvalidInput> {
    let r = Reader { annotations };
    let mut events = Vec::new();
    for key in annotations.keys() {
        let Some(name) = key.strip_prefix(PREFIX) else { continue };
        if KNOWN.contains(&name) || [SIZE, EIP_ADDRESS, EIP_ID].contains(&key.as_str()) {
            continue;
        }
        let hint = closest(name, &KNOWN).map(|c| format!("; did you mean {PREFIX}{c}?")).unwrap_or_default();
        events.push(Event::warning(
            "UnknownAnnotation",
            format!("annotation {key} is not a Cube setting and is ignored{hint}"),
        ));
    }

    let mut ignored = Vec::new();
    let tag = r.raw("cube-tag").filter(|t| !t.is_empty()).map(str::to_string);
    let charge_type = r
        .choice(
            "cube-chargetype",
            &[("year", ChargeType::Year), ("month", ChargeType::Month), ("postpay", ChargeType::Postpay)],
        )?
        .unwrap_or(ChargeType::Postpay);
    let quantity = match r.int("cube-quantity")? {
        // Billed by the second: a purchase length means nothing (the guide gives 0 a meaning
        // only with month).
        Some(0) if charge_type == ChargeType::Postpay => {
            ignored.push(no_effect(
                "cube-quantity",
                "0",
                "cube-chargetype is postpay (billed by the second, no purchase length); 1 is used",
            ));
            1
        }
        Some(0) if charge_type != ChargeType::Month => {
            return Err(invalid(
                "cube-quantity",
                "0",
                "0 (until the end of the month) is only accepted when cube-chargetype is month",
            ));
        }
        q => q.unwrap_or(1),
    };

    let eip = r.bool("cube-eip")?.unwrap_or(false);
    if !eip {
        // The guide: cube-eip-id takes effect only with cube-eip "true"; so do the other EIP
        // settings, which describe an EIP that will not exist.
        // The EIP settings: every known annotation past `cube-eip` itself.
        for name in KNOWN.iter().filter(|k| k.starts_with("cube-eip-")) {
            if let Some(v) = r.raw(name) {
                ignored.push(no_effect(name, v, "cube-eip is not \"true\", so no EIP is bound"));
            }
        }
        warn_ignored(&mut events, ignored);
        return Ok(CubeSettings { tag, charge_type, quantity, eip: None, events });
    }
    let id = r.id("cube-eip-id", "eip-")?;
    let pay_mode = r
        .choice(
            "cube-eip-paymode",
            &[
                ("traffic", PayMode::Traffic),
                ("bandwidth", PayMode::Bandwidth),
                ("sharebandwidth", PayMode::ShareBandwidth),
            ],
        )?
        .unwrap_or(PayMode::Bandwidth);
    let mut share_bandwidth_id = r.id("cube-eip-share-bandwidth-id", "bwshare-")?;
    let bandwidth = r.int("cube-eip-bandwidth")?;
    let eip_charge_type = r.choice(
        "cube-eip-chargetype",
        &[("year", EipChargeType::Year), ("month", EipChargeType::Month), ("dynamic", EipChargeType::Dynamic)],
    )?;
    let eip_quantity = r.int("cube-eip-quantity")?;
    let release = r.bool("cube-eip-release")?.unwrap_or(true);
    let security_group_id = r.id("cube-eip-security-group-id", "firewall-")?;

    if let Some(bw) = &share_bandwidth_id
        && pay_mode != PayMode::ShareBandwidth
    {
        // The guide: the shared bandwidth id takes effect only in shared-bandwidth pay mode.
        ignored.push(no_effect(
            "cube-eip-share-bandwidth-id",
            bw,
            &format!("cube-eip-paymode is {}, not sharebandwidth", pay_mode.api().to_ascii_lowercase()),
        ));
        share_bandwidth_id = None;
    }
    let bandwidth = match (pay_mode, bandwidth) {
        (PayMode::ShareBandwidth, Some(b)) if b != 0 => {
            return Err(InvalidInput::new(
                "InvalidAnnotation",
                field("cube-eip-bandwidth"),
                format!(
                    "annotation {PREFIX}cube-eip-bandwidth is {b}, but must be 0 when cube-eip-paymode is sharebandwidth"
                ),
            ));
        }
        (PayMode::ShareBandwidth, _) => 0,
        (_, Some(0)) => {
            return Err(invalid(
                "cube-eip-bandwidth",
                "0",
                "must be at least 1 Mbps unless cube-eip-paymode is sharebandwidth",
            ));
        }
        (_, b) => b.unwrap_or(2),
    };
    if id.is_none() && pay_mode == PayMode::ShareBandwidth && share_bandwidth_id.is_none() {
        return Err(InvalidInput::new(
            "InvalidAnnotation",
            field("cube-eip-share-bandwidth-id"),
            format!(
                "annotation {PREFIX}cube-eip-share-bandwidth-id is missing, but a new EIP with cube-eip-paymode sharebandwidth needs the shared bandwidth id (bwshare-…)"
            ),
        ));
    }
    let eip_charge_type = eip_charge_type.unwrap_or(match charge_type {
        ChargeType::Year => EipChargeType::Year,
        ChargeType::Month => EipChargeType::Month,
        ChargeType::Postpay => EipChargeType::Dynamic,
    });
    let eip_quantity = match eip_quantity {
        // Billed by the hour: a purchase length means nothing.
        Some(0) if eip_charge_type == EipChargeType::Dynamic => {
            ignored.push(no_effect(
                "cube-eip-quantity",
                "0",
                "cube-eip-chargetype is dynamic (billed by the hour, no purchase length); 1 is used",
            ));
            1
        }
        Some(q) => q,
        // "Until the end of the month" carries over only to a monthly EIP.
        None if quantity == 0 && eip_charge_type != EipChargeType::Month => 1,
        None => quantity,
    };
    if eip_quantity == 0 && eip_charge_type != EipChargeType::Month {
        return Err(invalid(
            "cube-eip-quantity",
            "0",
            "0 (until the end of the month) is only accepted when cube-eip-chargetype is month",
        ));
    }

    warn_ignored(&mut events, ignored);
    Ok(CubeSettings {
        tag,
        charge_type,
        quantity,
        eip: Some(EipSettings {
            id,
            pay_mode,
            share_bandwidth_id,
            bandwidth,
            charge_type: eip_charge_type,
            quantity: eip_quantity,
            release,
            security_group_id,
        }),
        events,
    })
}

/// The candidate nearest to `word` by edit distance, if it is near enough to be a typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .map(|(_, c)| c)
}

/// Levenshtein distance.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(cur).min(row[j]) };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // tables of cases
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string())).collect()
    }

    #[test]
    fn defaults_apply_without_annotations() {
        let s = parse(&BTreeMap::new()).unwrap();
        assert_eq!(
            s,
            CubeSettings { tag: None, charge_type: ChargeType::Postpay, quantity: 1, eip: None, events: vec![] }
        );
    }

    #[test]
    fn eip_defaults_follow_the_cube_billing() {
        let s = parse(&ann(&[("cube-eip", "true")])).unwrap();
        assert_eq!(
            s.eip.unwrap(),
            EipSettings {
                id: None,
                pay_mode: PayMode::Bandwidth,
                share_bandwidth_id: None,
                bandwidth: 2,
                charge_type: EipChargeType::Dynamic,
                quantity: 1,
                release: true,
                security_group_id: None,
            }
        );
        let s = parse(&ann(&[("cube-eip", "true"), ("cube-chargetype", "month"), ("cube-quantity", "0")])).unwrap();
        let e = s.eip.unwrap();
        assert_eq!((e.charge_type, e.quantity), (EipChargeType::Month, 0));
        let s = parse(&ann(&[
            ("cube-eip", "true"),
            ("cube-chargetype", "month"),
            ("cube-quantity", "0"),
            ("cube-eip-chargetype", "dynamic"),
        ]))
        .unwrap();
        let e = s.eip.unwrap();
        assert_eq!((e.charge_type, e.quantity), (EipChargeType::Dynamic, 1));
        let s = parse(&ann(&[("cube-eip", "true"), ("cube-chargetype", "year"), ("cube-quantity", "2")])).unwrap();
        let e = s.eip.unwrap();
        assert_eq!((e.charge_type, e.quantity), (EipChargeType::Year, 2));
    }

    #[test]
    fn every_value_maps_to_its_api_value() {
        let cases: &[(&str, &str, &str)] = &[
            ("cube-chargetype", "year", "Year"),
            ("cube-chargetype", "month", "Month"),
            ("cube-chargetype", "postpay", "Postpay"),
        ];
        for (k, v, api) in cases {
            assert_eq!(parse(&ann(&[(k, v)])).unwrap().charge_type.api(), *api);
        }
        let eip = |pairs: &[(&str, &str)]| {
            let mut all = vec![("cube-eip", "true")];
            all.extend_from_slice(pairs);
            parse(&ann(&all)).unwrap().eip.unwrap()
        };
        for (v, api) in [("traffic", "Traffic"), ("bandwidth", "Bandwidth")] {
            assert_eq!(eip(&[("cube-eip-paymode", v)]).pay_mode.api(), api);
        }
        let shared = eip(&[("cube-eip-paymode", "sharebandwidth"), ("cube-eip-share-bandwidth-id", "bwshare-1")]);
        assert_eq!((shared.pay_mode.api(), shared.bandwidth), ("ShareBandwidth", 0));
        for (v, api) in [("year", "Year"), ("month", "Month"), ("dynamic", "Dynamic")] {
            assert_eq!(eip(&[("cube-eip-chargetype", v)]).charge_type.api(), api);
        }
        let full = eip(&[
            ("cube-eip-id", "eip-abc"),
            ("cube-eip-bandwidth", "10"),
            ("cube-eip-quantity", "3"),
            ("cube-eip-release", "false"),
            ("cube-eip-security-group-id", "firewall-xyz"),
        ]);
        assert_eq!(full.id.as_deref(), Some("eip-abc"));
        assert_eq!((full.bandwidth, full.quantity, full.release), (10, 3, false));
        assert_eq!(full.security_group_id.as_deref(), Some("firewall-xyz"));
        assert_eq!(parse(&ann(&[("cube-tag", "web")])).unwrap().tag.as_deref(), Some("web"));
        assert_eq!(parse(&ann(&[("cube-eip", "false")])).unwrap().eip, None);
        assert_eq!(eip(&[("cube-eip-id", "")]).id, None);
    }

    #[test]
    fn wrong_values_name_the_annotation_and_the_rule() {
        let cases: &[(&[(&str, &str)], &str, &str)] = &[
            (&[("cube-chargetype", "weekly")], "cube-chargetype", "must be one of year, month, postpay"),
            (&[("cube-quantity", "-1")], "cube-quantity", "whole number"),
            (&[("cube-quantity", "two")], "cube-quantity", "whole number"),
            (&[("cube-chargetype", "year"), ("cube-quantity", "0")], "cube-quantity", "cube-chargetype is month"),
            (&[("cube-eip", "yes")], "cube-eip", "must be one of true, false"),
            (&[("cube-eip", "true"), ("cube-eip-id", "abc")], "cube-eip-id", "eip-xxxxxxxx"),
            (
                &[("cube-eip", "true"), ("cube-eip-paymode", "free")],
                "cube-eip-paymode",
                "traffic, bandwidth, sharebandwidth",
            ),
            (
                &[
                    ("cube-eip", "true"),
                    ("cube-eip-paymode", "sharebandwidth"),
                    ("cube-eip-share-bandwidth-id", "bw-1"),
                ],
                "cube-eip-share-bandwidth-id",
                "bwshare-",
            ),
            (
                &[("cube-eip", "true"), ("cube-eip-paymode", "sharebandwidth")],
                "cube-eip-share-bandwidth-id",
                "is missing",
            ),
            (&[("cube-eip", "true"), ("cube-eip-bandwidth", "fast")], "cube-eip-bandwidth", "whole number"),
            (&[("cube-eip", "true"), ("cube-eip-bandwidth", "0")], "cube-eip-bandwidth", "at least 1 Mbps"),
            (
                &[("cube-eip", "true"), ("cube-eip-chargetype", "postpay")],
                "cube-eip-chargetype",
                "year, month, dynamic",
            ),
            (&[("cube-eip", "true"), ("cube-eip-quantity", "x")], "cube-eip-quantity", "whole number"),
            (
                &[("cube-eip", "true"), ("cube-eip-chargetype", "year"), ("cube-eip-quantity", "0")],
                "cube-eip-quantity",
                "cube-eip-chargetype is month",
            ),
            (&[("cube-eip", "true"), ("cube-eip-release", "no")], "cube-eip-release", "true, false"),
            (
                &[("cube-eip", "true"), ("cube-eip-security-group-id", "sg-1")],
                "cube-eip-security-group-id",
                "firewall-xxxxxxxx",
            ),
        ];
        for (pairs, name, needle) in cases {
            let err = parse(&ann(pairs)).unwrap_err();
            assert_eq!(err.reason, "InvalidAnnotation");
            assert_eq!(err.field, format!("metadata.annotations[cube.ucloud.cn/{name}]"), "{pairs:?}");
            assert!(err.message.contains(needle), "{pairs:?}: {}", err.message);
        }
    }

    #[test]
    fn bandwidth_with_shared_bandwidth_reads_like_the_guide() {
        let err = parse(&ann(&[
            ("cube-eip", "true"),
            ("cube-eip-paymode", "sharebandwidth"),
            ("cube-eip-share-bandwidth-id", "bwshare-1"),
            ("cube-eip-bandwidth", "5"),
        ]))
        .unwrap_err();
        assert_eq!(
            err.message,
            "annotation cube.ucloud.cn/cube-eip-bandwidth is 5, but must be 0 when cube-eip-paymode is sharebandwidth"
        );
    }

    #[test]
    fn settings_the_guide_says_take_no_effect_are_ignored_with_a_warning() {
        let cases: &[(&[(&str, &str)], &str, &str)] = &[
            // 仅在 cube.ucloud.cn/cube-eip: "true" 时生效
            (&[("cube-eip-id", "eip-1")], "cube-eip-id", "cube-eip is not \"true\""),
            (&[("cube-eip", "false"), ("cube-eip-bandwidth", "0")], "cube-eip-bandwidth", "no EIP is bound"),
            // 仅在 EIP 计费模式为「共享带宽」时生效
            (
                &[("cube-eip", "true"), ("cube-eip-share-bandwidth-id", "bwshare-1")],
                "cube-eip-share-bandwidth-id",
                "cube-eip-paymode is bandwidth, not sharebandwidth",
            ),
            (&[("cube-quantity", "0")], "cube-quantity", "cube-chargetype is postpay"),
            (
                &[("cube-eip", "true"), ("cube-eip-quantity", "0")],
                "cube-eip-quantity",
                "cube-eip-chargetype is dynamic",
            ),
        ];
        for (pairs, name, why) in cases {
            let s = parse(&ann(pairs)).unwrap_or_else(|e| panic!("{pairs:?}: {e}"));
            assert_eq!(s.events.len(), 1, "{pairs:?}: {:?}", s.events);
            let e = &s.events[0];
            assert_eq!((e.kind, e.reason.as_str()), (vk_provider_sdk::EventKind::Warning, "AnnotationHasNoEffect"));
            assert!(e.message.contains(&format!("{PREFIX}{name}")) && e.message.contains(why), "{}", e.message);
        }
        assert_eq!(parse(&ann(&[("cube-eip-id", "eip-1")])).unwrap().eip, None);
        let shared = parse(&ann(&[("cube-eip", "true"), ("cube-eip-share-bandwidth-id", "bwshare-1")])).unwrap();
        assert_eq!(shared.eip.unwrap().share_bandwidth_id, None);
        assert_eq!(parse(&ann(&[("cube-quantity", "0")])).unwrap().quantity, 1);
        // Several ignored settings: one Warning naming each (one reason per pod folds into one Event).
        let both = parse(&ann(&[("cube-eip-id", "eip-1"), ("cube-quantity", "0")])).unwrap();
        assert_eq!(both.events.len(), 1);
        assert!(both.events[0].message.contains("cube-eip-id") && both.events[0].message.contains("cube-quantity"));
    }

    #[test]
    fn misspelt_annotations_warn_with_the_closest_name() {
        let s =
            parse(&ann(&[("cube-eip-bandwith", "5"), ("cube-charge-type", "year"), ("size", "1-2Gi"), ("zzz", "1")]))
                .unwrap();
        let messages: Vec<&str> = s.events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(s.events.len(), 3, "{messages:?}");
        assert!(
            s.events.iter().all(|e| e.kind == vk_provider_sdk::EventKind::Warning && e.reason == "UnknownAnnotation")
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("cube-charge-type") && m.contains("did you mean cube.ucloud.cn/cube-chargetype?"))
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("cube-eip-bandwith")
                    && m.contains("did you mean cube.ucloud.cn/cube-eip-bandwidth?"))
        );
        assert!(messages.iter().any(|m| m.contains("zzz") && !m.contains("did you mean")));
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        for (a, b, d) in
            [("", "abc", 3), ("kitten", "sitting", 3), ("cube-eip", "cube-eip", 0), ("cube-tga", "cube-tag", 2)]
        {
            assert_eq!(edit_distance(a, b), d, "{a} {b}");
        }
    }
}
