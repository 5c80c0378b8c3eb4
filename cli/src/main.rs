//! The `edgeline` binary: see the library, and `edgeline --help`.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(edgeline::run(std::env::args_os(), "edgeline"))
}
