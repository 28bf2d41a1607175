//! The `capstan` binary: see `capstan --help`.

fn main() -> anyhow::Result<()> {
    capstan::cli::main()
}
