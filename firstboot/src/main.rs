fn main() {
    eprintln!("kiln-firstboot: apply is not implemented yet");
    std::process::exit(1);
}
