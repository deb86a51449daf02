//! Detection judged on a simulated fleet with the shipped configuration: a day of 30 pumps and
//! compressors at three sites (one reading per 10 s), eight of them wearing out over hours, the
//! others changing their operating point. Every message goes through the real core and a sled
//! store; models are fitted when a live trainer would fit them.

use std::path::Path;

use fieldwatch::sim::evaluate;
use fieldwatch::sim::fleet::Fleet;
use fieldwatch::Config;

fn shipped() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fieldwatch.toml");
    Config::load(&path).unwrap()
}

#[test]
fn every_failing_device_is_ticketed_before_it_fails_and_healthy_devices_get_no_ticket() {
    let mut fleet = Fleet::scenario(30, 24, 1_767_225_600_000, 7);
    let report = evaluate::run(&mut fleet, &shipped()).unwrap();
    println!("{}", report.render());
    assert_eq!(report.failures.len(), 8);
    for f in &report.failures {
        assert!(f.caught(), "{} ({}) was not ticketed before it failed: {f:?}", f.device, f.fault);
    }
    // Healthy devices (about 650 device-hours, each changing its operating point a few
    // times) and failing ones before their fault began get no ticket.
    assert!(report.false_tickets.is_empty(), "false tickets: {:?}", report.false_tickets);
    assert!(report.suppressed > 0, "the maintenance window held its incidents back");
}
