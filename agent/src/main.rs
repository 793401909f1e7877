//! `lb-agent`: the per-host agent (see issue 3; not built yet).

fn main() {
    eprintln!("lb-agent is not implemented yet; see docs/design.md");
    std::process::exit(2);
}
