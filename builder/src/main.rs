//! `kiln`: thin shim over the kiln_builder library.

fn main() {
    std::process::exit(kiln_builder::main_with_args(std::env::args_os()));
}
