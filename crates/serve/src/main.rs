//! `kiln-serve`: the runtime-only server binary (no LLVM, no compiler): what a container
//! runs. The same as `kiln serve` of the full CLI.

use clap::Parser;

/// Serve a repository of compiled Kiln models (`NAME/VERSION/model.kiln`) over the Open
/// Inference Protocol (KServe v2), HTTP/REST and gRPC.
#[derive(Parser)]
#[command(name = "kiln-serve", version)]
struct Cli {
    #[command(flatten)]
    args: kiln_serve::ServeArgs,
}

fn main() -> std::process::ExitCode {
    match kiln_serve::run(Cli::parse().args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln-serve: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
