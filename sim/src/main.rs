//! `sim --port 8790`: the provider simulator on its own, for `cargo xtask dev`.

fn main() {
    let mut port = 8790u16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--port" {
            port = args.next().and_then(|p| p.parse().ok()).unwrap_or(port);
        }
    }
    match sim::Sim::start(port) {
        Ok(s) => {
            eprintln!("sim: kie.ai simulator on {}", s.base_url());
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("sim: {e}");
            std::process::exit(1);
        }
    }
}
