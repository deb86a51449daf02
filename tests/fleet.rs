//! Detection judged on a simulated fleet with the shipped configuration: a day of 30 pumps and
//! compressors at three sites (one reading per 10 s), eight of them wearing out over hours, the
//! others changing their operating point. Every message goes through the real core and a sled
//! store; models are fitted when a live trainer would fit them.

use std::path::Path;

use fieldwatch::sim::evaluate;
use fieldwatch::sim::fleet::{Family, Fleet};
use fieldwatch::Config;

fn shipped() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fieldwatch.toml");
    Config::load(&path).unwrap()
}

#[test]
fn every_failing_device_is_ticketed_before_it_fails_and_healthy_devices_get_no_ticket() {
    let mut fleet = Fleet::scenario(30, 24, 1_767_225_600_000, 7);
    // The set-point scenario's faults start after 3 h: judged without a day of commissioning.
    let mut config = shipped();
    config.detect.context.enabled = false;
    config.detect.drift.reference_for = std::time::Duration::from_secs(3600);
    let report = evaluate::run(&mut fleet, &config).unwrap();
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

/// Real days with the shipped configuration as it is: day shifts with their ramps, nights
/// stopped or at low load, a weekend, each site's weather (a daily swing and fronts), gaps and
/// noise bursts. Twelve healthy devices at three sites over four days stay within the target
/// of at most one false ticket per 100 healthy device-hours.
#[test]
fn a_healthy_fleet_through_shifts_weather_and_a_weekend_stays_within_one_false_ticket_per_100_hours() {
    let mut fleet = Fleet::week(Family::Linear, 12, 4, 1.5, 1_767_225_600_000, 21);
    fleet.faults.clear();
    let report = evaluate::run(&mut fleet, &shipped()).unwrap();
    println!("{}", report.render());
    assert!(report.healthy_device_hours > 11.0 * 4.0 * 24.0);
    assert!(report.false_per_100h() <= 1.0, "false tickets: {:?}", report.false_tickets);
}

/// The same days with eight of sixteen devices failing after commissioning: the bearing wears
/// and the stuck sensors are each ticketed before the failure, six of the eight failures in all,
/// and the healthy devices stay within a false ticket per 100 device-hours. Not all caught in
/// time yet on this short fleet: the weak relation faults (fouling, a current that mirrors the
/// load's short cycle), and a cooling drift that fails 67 minutes after it starts (ticketed
/// 2 minutes after the failure); BENCHMARKS.md gives the fleet-wide figures.
#[test]
fn failures_among_real_days_are_ticketed_before_they_happen() {
    let mut fleet = Fleet::week(Family::Linear, 16, 3, 1.5, 1_767_225_600_000, 5);
    let report = evaluate::run(&mut fleet, &shipped()).unwrap();
    println!("{}", report.render());
    assert_eq!(report.failures.len(), 8);
    let missed: Vec<_> =
        report.failures.iter().filter(|f| !f.caught() && matches!(f.fault, "bearing wear" | "stuck sensor")).collect();
    assert!(missed.is_empty(), "not ticketed before failing: {missed:?}");
    assert!(report.caught() >= 6, "{} of 8 ticketed before failing", report.caught());
    assert!(report.false_per_100h() <= 1.0, "false tickets: {:?}", report.false_tickets);
}
