//! `kiln-firstboot`: thin shim over the kiln_firstboot library.

fn main() {
    std::process::exit(kiln_firstboot::cmd::main_with_args(std::env::args_os()));
}
