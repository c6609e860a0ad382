//! Scoring: rank-based, as DAPI does it. A positive RAM weight favours the server with the
//! *least* unreserved RAM (packing); magnitudes only matter through their rank.

use rand::Rng;

use crate::{Config, Request, Seen, Spread};

/// weight × (n−1−i)/(n−1) for the server at rank i (0 = best) of n.
fn linear(rank: usize, n: usize, weight: f64) -> f64 {
    if n <= 1 { weight } else { weight * (n - 1 - rank) as f64 / (n - 1) as f64 }
}

/// Scores every server and returns the best (ties go to the first of a random order).
pub fn pick(set: &[Seen<'_>], req: &Request, cfg: &Config, rng: &mut impl Rng) -> uuid::Uuid {
    let n = set.len();
    let (mut w_ram, w_disk, mut w_random, mut w_owner) = (cfg.weight_ram, cfg.weight_disk, cfg.weight_random, 0.0);
    match req.spread {
        Some(Spread::MinRam) => w_ram += 2.0,
        Some(Spread::Random) => w_random += 2.0,
        Some(Spread::MinOwner) => w_owner += 2.0,
        None => {}
    }
    // A random order first: equal servers then rank (and win ties) in random order, as
    // DAPI's random chunks made them.
    let mut shuffled: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        shuffled.swap(i, rng.random_range(0..=i));
    }
    let mut scores = vec![0.0f64; n];
    let rank_by = |scores: &mut Vec<f64>, key: &dyn Fn(&Seen<'_>) -> f64, weight: f64| {
        if weight == 0.0 {
            return;
        }
        let keys: Vec<f64> = set.iter().map(key).collect();
        let mut order = shuffled.clone();
        order.sort_by(|&a, &b| keys[a].partial_cmp(&keys[b]).unwrap_or(std::cmp::Ordering::Equal));
        for (rank, &i) in order.iter().enumerate() {
            scores[i] += linear(rank, n, weight);
        }
    };
    rank_by(&mut scores, &|(_, sum)| sum.free.ram_mib, w_ram);
    rank_by(&mut scores, &|(_, sum)| sum.free.disk_mib, w_disk);
    rank_by(&mut scores, &|(s, _)| s.vms.iter().filter(|v| v.owner == Some(req.owner)).count() as f64, w_owner);
    for s in scores.iter_mut() {
        *s += rng.random::<f64>() * w_random;
    }
    // max_by keeps the last maximum; iterate in reverse shuffled order so the first wins.
    let best =
        shuffled.into_iter().rev().max_by(|&a, &b| scores[a].partial_cmp(&scores[b]).unwrap_or(std::cmp::Ordering::Equal)).unwrap_or(0);
    set[best].0.uuid
}
