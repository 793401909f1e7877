//! `[decap]`: the interface the agent installs the decapsulation on, the
//! outer sources it accepts besides the manager's, the GUE port.

use std::{collections::BTreeSet, net::IpAddr, path::PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::Validator;
use crate::{
    config::{ApplicationConfig, ConfigError, DecapConfig},
    decap::{PIN_ROOT, valid_interface_name},
};

/// `[decap]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DecapSection {
    interface: Spanned<String>,
    #[serde(default)]
    sources: Vec<Spanned<IpAddr>>,
    #[serde(default)]
    gue_port: Option<Spanned<u16>>,
    #[serde(default)]
    pin_root: Option<Spanned<PathBuf>>,
}

impl Validator<'_> {
    /// `[decap]`: an interface name, unicast sources, a GUE port, and VIPs
    /// to decapsulate for (the applications').
    pub(super) fn decap(
        &self,
        section: Spanned<DecapSection>,
        applications: &[ApplicationConfig],
    ) -> Result<DecapConfig, ConfigError> {
        let span = section.span();
        let section = section.into_inner();
        let interface = section.interface.get_ref().trim().to_owned();
        if !valid_interface_name(&interface) {
            return Err(self.error(
                section.interface.span(),
                "decap.interface",
                format!(
                    "{interface:?} is not an interface name (1 to 15 bytes, no '/' or blanks): \
                     write the interface tunnelled packets arrive on, e.g. \"eth0\""
                ),
            ));
        }
        let mut sources = Vec::with_capacity(section.sources.len());
        for source in &section.sources {
            let address = *source.get_ref();
            if !lb_proto::is_unicast(address) {
                return Err(self.error(
                    source.span(),
                    "decap.sources",
                    format!(
                        "{address} is not a unicast address: write a balancer node's tunnel_source"
                    ),
                ));
            }
            sources.push(address);
        }
        let gue_port = match &section.gue_port {
            Some(port) if *port.get_ref() == 0 => {
                return Err(self.error(
                    port.span(),
                    "decap.gue_port",
                    "is 0: write the nodes' gue_port (default 6080)",
                ));
            }
            Some(port) => *port.get_ref(),
            None => lb_common::decap::DEFAULT_GUE_PORT,
        };
        let vips: BTreeSet<IpAddr> = applications.iter().flat_map(|a| &a.vips).copied().collect();
        if vips.is_empty() {
            return Err(self.error(
                span,
                "decap",
                "no application lists vips: the decapsulation takes off only packets for this \
                 server's VIPs; write them in [[application]] vips",
            ));
        }
        Ok(DecapConfig {
            interface,
            sources,
            gue_port,
            pin_root: section
                .pin_root
                .map_or_else(|| PathBuf::from(PIN_ROOT), Spanned::into_inner),
            vips: vips.into_iter().collect(),
        })
    }
}
