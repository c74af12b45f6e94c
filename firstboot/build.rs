//! Link options for the static musl build that ships (`--profile release-small --target
//! x86_64-unknown-linux-musl`, docs/firstboot.md "Size and build"); no other build changes.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=no-eh-frame.ld");
    let musl = std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|e| e == "musl");
    // Cargo tells build scripts "release" for every optimized profile, and not the profile's
    // panic strategy: the profile's own name is the directory above `build/` in OUT_DIR
    // (<target>/<triple>/release-small/build/...).
    let out = std::env::var("OUT_DIR").unwrap_or_default();
    let small = Path::new(&out)
        .ancestors()
        .any(|p| p.file_name().is_some_and(|n| n == "release-small"));
    if !(musl && small) {
        return;
    }
    let arg = |a: &str| println!("cargo:rustc-link-arg-bin=kiln-firstboot={a}");
    // No unwind tables (.eh_frame and its index .eh_frame_hdr, 520 KiB of the 4 MiB):
    // release-small aborts on panic, so nothing unwinds; only a RUST_BACKTRACE trace of the
    // (stripped) binary is lost. Never for panic=unwind builds: the unwinder would find no
    // frame and a panic could not unwind (it aborts, "failed to initiate panic").
    arg("-Wl,--no-eh-frame-hdr");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    arg(&format!("-Wl,-T,{dir}/no-eh-frame.ld"));
    // Relative relocations packed (DT_RELR, GNU ld >= 2.38) instead of 24-byte .rela.dyn
    // entries (150 KiB): the binary stays a static-pie, loaded at a random address. The musl
    // that rustc links (1.2.5; DT_RELR since 1.2.4) applies them at startup.
    arg("-Wl,-z,pack-relative-relocs");
}
