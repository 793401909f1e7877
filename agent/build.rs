//! Builds the eBPF objects (the decapsulation program among them) and
//! points `LB_DECAP_OBJECT` at it for `include_bytes_aligned!`.

fn main() {
    let root = lb_ebpf_build::workspace_root();
    lb_ebpf_build::rerun_if_changed(&root);
    let dir = lb_ebpf_build::objects(&root);
    println!(
        "cargo:rustc-env=LB_DECAP_OBJECT={}",
        dir.join("xdp-decap").display()
    );
}
