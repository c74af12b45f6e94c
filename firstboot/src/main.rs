//! `kiln-firstboot`: thin shim over the kiln_firstboot library.

fn main() {
    kiln_signing::exit::quiet_on_broken_pipe();
    std::process::exit(kiln_firstboot::cmd::main_with_args(std::env::args_os()));
}
