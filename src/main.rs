fn main() {
    std::process::exit(venvimg::cli::main());
}
