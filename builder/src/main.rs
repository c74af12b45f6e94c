//! `kiln`: thin shim over the kiln_builder library.

fn main() {
    kiln_signing::exit::quiet_on_broken_pipe();
    std::process::exit(kiln_builder::main_with_args(std::env::args_os()));
}
