//! `<report>` read straight from the decoder's markup events: the one
//! message a manager reads thousands of times a second, so it skips the
//! second pass through serde.
//!
//! [`PartialReport`] takes only the layout the [`Encoder`](crate::Encoder)
//! writes: known elements and attributes, leaf elements empty, no text,
//! comments or other elements. On anything else it gives up (`None`) and
//! the decoder deserializes the message with serde, as every other message.
//! Values are read as quick-xml's deserializer reads attributes (normalized,
//! entities resolved, numbers and booleans trimmed), and every value serde
//! would refuse makes it give up too, so a report it returns is the one
//! serde returns, and every error still comes from serde.

use std::{borrow::Cow, net::IpAddr, str::FromStr};

use quick_xml::{
    XmlVersion, escape::resolve_predefined_entity, events::BytesStart, utils::trim_xml_spaces,
};

use crate::{
    ApplicationStatus, Cpu, Health, HealthState, Load, Memory, Nic, Readiness, Report, Utilization,
    UtilizationSource,
};

/// How deep quick-xml's deserializer resolves entities in attribute values.
const ENTITY_DEPTH: usize = 128;

/// A `<report>` read so far. `None` from any method means "not on the fast
/// path": drop it and deserialize the message with serde.
#[derive(Debug)]
pub(super) struct PartialReport {
    /// [`Limits::max_attributes`](crate::Limits::max_attributes).
    max_attributes: usize,
    seq: u64,
    host: String,
    time_ms: u64,
    interval_ms: u64,
    utilization: Option<Utilization>,
    cpu: Option<Cpu>,
    load: Option<Load>,
    memory: Option<Memory>,
    nics: Vec<Nic>,
    applications: Vec<ApplicationStatus>,
    /// The `<application>` open inside the report, if any.
    application: Option<PartialApplication>,
    /// The previous child element.
    last: Option<ReportChild>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReportChild {
    Utilization,
    Cpu,
    Load,
    Memory,
    Nic,
    Application,
}

/// An `<application>` of a report, read so far.
#[derive(Debug)]
struct PartialApplication {
    name: String,
    established: u64,
    vip_established: u64,
    health: Option<Health>,
    readiness: Vec<Readiness>,
    /// The previous child element.
    last: Option<ApplicationChild>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApplicationChild {
    Health,
    Readiness,
}

impl PartialReport {
    /// Starts with the `<report ...>` start tag.
    pub(super) fn start(tag: &BytesStart<'_>, max_attributes: usize) -> Option<Self> {
        let (mut seq, mut host, mut time_ms, mut interval_ms) = (None, None, None, None);
        each_attribute(tag, max_attributes, |key, value| {
            match key {
                "seq" => once(&mut seq, number(&value)?)?,
                "host" => once(&mut host, value.into_owned())?,
                "time-ms" => once(&mut time_ms, number(&value)?)?,
                "interval-ms" => once(&mut interval_ms, number(&value)?)?,
                _ => return None,
            }
            Some(())
        })?;
        Some(Self {
            max_attributes,
            seq: seq?,
            host: host?,
            time_ms: time_ms?,
            interval_ms: interval_ms?,
            utilization: None,
            cpu: None,
            load: None,
            memory: None,
            nics: Vec::new(),
            applications: Vec::new(),
            application: None,
            last: None,
        })
    }

    /// A start tag (an empty element when `empty`) inside the report.
    pub(super) fn open(&mut self, tag: &BytesStart<'_>, empty: bool) -> Option<()> {
        let max_attributes = self.max_attributes;
        if let Some(application) = &mut self.application {
            return application.open(tag, empty, max_attributes);
        }
        let child = match (tag.name().into_inner(), empty) {
            ("utilization", true) => {
                once(&mut self.utilization, utilization(tag, max_attributes)?)?;
                ReportChild::Utilization
            }
            ("cpu", true) => {
                once(&mut self.cpu, cpu(tag, max_attributes)?)?;
                ReportChild::Cpu
            }
            ("load", true) => {
                once(&mut self.load, load(tag, max_attributes)?)?;
                ReportChild::Load
            }
            ("memory", true) => {
                once(&mut self.memory, memory(tag, max_attributes)?)?;
                ReportChild::Memory
            }
            ("nic", true) => {
                one_run(&self.nics, self.last, ReportChild::Nic)?;
                self.nics.push(nic(tag, max_attributes)?);
                ReportChild::Nic
            }
            ("application", false) => {
                one_run(&self.applications, self.last, ReportChild::Application)?;
                self.application = Some(PartialApplication::start(tag, max_attributes)?);
                ReportChild::Application
            }
            _ => return None,
        };
        self.last = Some(child);
        Some(())
    }

    /// An end tag inside the report: the fast path takes leaf elements
    /// only as empty elements, so it is `</application>`.
    pub(super) fn close(&mut self) -> Option<()> {
        let application = self.application.take()?;
        self.applications.push(application.finish()?);
        Some(())
    }

    /// The report, after `</report>`.
    pub(super) fn finish(self) -> Option<Report> {
        if self.application.is_some() {
            return None;
        }
        Some(Report {
            seq: self.seq,
            host: self.host,
            time_ms: self.time_ms,
            interval_ms: self.interval_ms,
            utilization: self.utilization?,
            cpu: self.cpu?,
            load: self.load?,
            memory: self.memory?,
            nics: self.nics,
            applications: self.applications,
        })
    }
}

impl PartialApplication {
    fn start(tag: &BytesStart<'_>, max_attributes: usize) -> Option<Self> {
        let (mut name, mut established, mut vip_established) = (None, None, None);
        each_attribute(tag, max_attributes, |key, value| {
            match key {
                "name" => once(&mut name, value.into_owned())?,
                "established" => once(&mut established, number(&value)?)?,
                "vip-established" => once(&mut vip_established, number(&value)?)?,
                _ => return None,
            }
            Some(())
        })?;
        Some(Self {
            name: name?,
            established: established?,
            vip_established: vip_established?,
            health: None,
            readiness: Vec::new(),
            last: None,
        })
    }

    fn open(&mut self, tag: &BytesStart<'_>, empty: bool, max_attributes: usize) -> Option<()> {
        let child = match (tag.name().into_inner(), empty) {
            ("health", true) => {
                once(&mut self.health, health(tag, max_attributes)?)?;
                ApplicationChild::Health
            }
            ("readiness", true) => {
                one_run(&self.readiness, self.last, ApplicationChild::Readiness)?;
                self.readiness.push(readiness(tag, max_attributes)?);
                ApplicationChild::Readiness
            }
            _ => return None,
        };
        self.last = Some(child);
        Some(())
    }

    fn finish(self) -> Option<ApplicationStatus> {
        Some(ApplicationStatus {
            name: self.name,
            established: self.established,
            vip_established: self.vip_established,
            health: self.health?,
            readiness: self.readiness,
        })
    }
}

/// Sets a field that may be given once: a second is a duplicate field for
/// serde, or a duplicate attribute.
fn once<T>(field: &mut Option<T>, value: T) -> Option<()> {
    if field.is_some() {
        return None;
    }
    *field = Some(value);
    Some(())
}

/// Checks that an element of a list continues its run: quick-xml's
/// deserializer (without its `overlapped-lists` feature) reads one run of
/// them, and a second run is a duplicate field.
fn one_run<T, C: PartialEq + Copy>(items: &[T], last: Option<C>, this: C) -> Option<()> {
    if items.is_empty() || last == Some(this) {
        Some(())
    } else {
        None
    }
}

fn utilization(tag: &BytesStart<'_>, max_attributes: usize) -> Option<Utilization> {
    let (mut value, mut source) = (None, None);
    each_attribute(tag, max_attributes, |key, text| {
        match key {
            "value" => once(&mut value, number(&text)?)?,
            "source" => {
                let value = match &*text {
                    "host-cpu" => UtilizationSource::HostCpu,
                    "cgroup-cpu" => UtilizationSource::CgroupCpu,
                    "connections" => UtilizationSource::Connections,
                    "command" => UtilizationSource::Command,
                    _ => return None,
                };
                once(&mut source, value)?;
            }
            _ => return None,
        }
        Some(())
    })?;
    Some(Utilization {
        value: value?,
        source: source?,
    })
}

fn cpu(tag: &BytesStart<'_>, max_attributes: usize) -> Option<Cpu> {
    let (mut host, mut cgroup) = (None, None);
    each_attribute(tag, max_attributes, |key, text| {
        match key {
            "host" => once(&mut host, number(&text)?)?,
            "cgroup" => once(&mut cgroup, number(&text)?)?,
            _ => return None,
        }
        Some(())
    })?;
    Some(Cpu {
        host: host?,
        cgroup,
    })
}

fn load(tag: &BytesStart<'_>, max_attributes: usize) -> Option<Load> {
    let (mut one, mut five, mut fifteen) = (None, None, None);
    each_attribute(tag, max_attributes, |key, text| {
        match key {
            "one" => once(&mut one, number(&text)?)?,
            "five" => once(&mut five, number(&text)?)?,
            "fifteen" => once(&mut fifteen, number(&text)?)?,
            _ => return None,
        }
        Some(())
    })?;
    Some(Load {
        one: one?,
        five: five?,
        fifteen: fifteen?,
    })
}

fn memory(tag: &BytesStart<'_>, max_attributes: usize) -> Option<Memory> {
    let (mut total, mut available) = (None, None);
    each_attribute(tag, max_attributes, |key, text| {
        match key {
            "total-bytes" => once(&mut total, number(&text)?)?,
            "available-bytes" => once(&mut available, number(&text)?)?,
            _ => return None,
        }
        Some(())
    })?;
    Some(Memory {
        total_bytes: total?,
        available_bytes: available?,
    })
}

fn nic(tag: &BytesStart<'_>, max_attributes: usize) -> Option<Nic> {
    let (mut name, mut rx, mut tx) = (None, None, None);
    each_attribute(tag, max_attributes, |key, text| {
        match key {
            "name" => once(&mut name, text.into_owned())?,
            "rx-bps" => once(&mut rx, number(&text)?)?,
            "tx-bps" => once(&mut tx, number(&text)?)?,
            _ => return None,
        }
        Some(())
    })?;
    Some(Nic {
        name: name?,
        rx_bps: rx?,
        tx_bps: tx?,
    })
}

fn health(tag: &BytesStart<'_>, max_attributes: usize) -> Option<Health> {
    let (mut state, mut rise, mut fall) = (None, None, None);
    let (mut ok_streak, mut fail_streak, mut detail) = (None, None, None);
    each_attribute(tag, max_attributes, |key, text| {
        match key {
            "state" => {
                let value = match &*text {
                    "up" => HealthState::Up,
                    "down" => HealthState::Down,
                    "unknown" => HealthState::Unknown,
                    "slow" => HealthState::Slow,
                    _ => return None,
                };
                once(&mut state, value)?;
            }
            "rise" => once(&mut rise, number(&text)?)?,
            "fall" => once(&mut fall, number(&text)?)?,
            "ok-streak" => once(&mut ok_streak, number(&text)?)?,
            "fail-streak" => once(&mut fail_streak, number(&text)?)?,
            "detail" => once(&mut detail, text.into_owned())?,
            _ => return None,
        }
        Some(())
    })?;
    Some(Health {
        state: state?,
        rise: rise?,
        fall: fall?,
        ok_streak: ok_streak?,
        fail_streak: fail_streak?,
        detail,
    })
}

fn readiness(tag: &BytesStart<'_>, max_attributes: usize) -> Option<Readiness> {
    let (mut vip, mut on_loopback, mut arp_ignore) = (None, None, None);
    let (mut arp_announce, mut local_probe, mut ready) = (None, None, None);
    let mut decap = None;
    each_attribute(tag, max_attributes, |key, text| {
        match key {
            // serde's `IpAddr` parses the text as it is, untrimmed.
            "vip" => once(&mut vip, IpAddr::from_str(&text).ok()?)?,
            "vip-on-loopback" => once(&mut on_loopback, boolean(&text)?)?,
            "arp-ignore" => once(&mut arp_ignore, number(&text)?)?,
            "arp-announce" => once(&mut arp_announce, number(&text)?)?,
            "local-probe" => once(&mut local_probe, boolean(&text)?)?,
            "ready" => once(&mut ready, boolean(&text)?)?,
            "decap" => once(&mut decap, boolean(&text)?)?,
            _ => return None,
        }
        Some(())
    })?;
    Some(Readiness {
        vip: vip?,
        vip_on_loopback: on_loopback?,
        arp_ignore: arp_ignore?,
        arp_announce: arp_announce?,
        local_probe: local_probe?,
        ready: ready?,
        decap,
    })
}

/// Calls `field` with each attribute's name and value, normalized as
/// quick-xml's deserializer does; `None` if there are more than
/// `max_attributes`, if one is broken, or if `field` says `None` (an
/// unknown name, a bad value, a name given twice). When it succeeds the
/// decoder's own attribute checks would pass, so it skips them.
fn each_attribute<'a>(
    tag: &'a BytesStart<'_>,
    max_attributes: usize,
    mut field: impl FnMut(&str, Cow<'a, str>) -> Option<()>,
) -> Option<()> {
    let mut attributes = tag.attributes();
    attributes.with_checks(false);
    for (count, attr) in attributes.enumerate() {
        if count >= max_attributes {
            return None;
        }
        let attr = attr.ok()?;
        let value = attr
            .normalized_value_with(
                XmlVersion::Implicit1_0,
                ENTITY_DEPTH,
                resolve_predefined_entity,
            )
            .ok()?;
        field(attr.key.into_inner(), value)?;
    }
    Some(())
}

/// A number as quick-xml's deserializer reads one: trimmed, then `FromStr`.
fn number<T: FromStr>(text: &str) -> Option<T> {
    trim_xml_spaces(text).parse().ok()
}

/// A boolean as quick-xml's deserializer reads one (XML Schema's four
/// spellings, trimmed).
fn boolean(text: &str) -> Option<bool> {
    match trim_xml_spaces(text) {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}
