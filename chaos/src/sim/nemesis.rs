//! The simulation's nemesis: one fault after another, each replacing the last (a new fault
//! heals the previous one's links first; crashed members stay down until a restart).

use super::SimError;
use super::cluster::Cluster;
use super::net::{Dice, Links};
use std::collections::BTreeSet;
use std::time::Duration;

/// A clean partition: two sides with no link between them, one of them holding a quorum.
#[derive(Clone, Debug)]
pub struct Split {
    pub minority: BTreeSet<u64>,
}

/// The members `member` can reach now: its side of a clean split, else everyone.
pub fn side_of(split: Option<&Split>, member: u64, members: u64) -> BTreeSet<u64> {
    match split {
        Some(s) if s.minority.contains(&member) => s.minority.clone(),
        Some(s) => (1..=members).filter(|n| !s.minority.contains(n)).collect(),
        None => (1..=members).collect(),
    }
}

fn cut_between(a: &BTreeSet<u64>, b: &BTreeSet<u64>) -> BTreeSet<(u64, u64)> {
    let mut cut = BTreeSet::new();
    for &x in a {
        for &y in b {
            cut.insert((x, y));
            cut.insert((y, x));
        }
    }
    cut
}

pub fn current_leader(cluster: &Cluster) -> Option<u64> {
    cluster
        .running()
        .into_iter()
        .find(|(_, m)| m.metrics().state == openraft::ServerState::Leader)
        .map(|(id, _)| id)
}

/// What the last fault left in force, and how long it holds.
pub struct Struck {
    pub text: String,
    pub hold: Duration,
}

#[derive(Default)]
pub struct Nemesis {
    pub split: Option<Split>,
}

impl Nemesis {
    fn random_minority(cluster: &Cluster, dice: &mut Dice) -> BTreeSet<u64> {
        let size = 1 + dice.below(cluster.members / 2);
        let mut minority = BTreeSet::new();
        while (minority.len() as u64) < size {
            minority.insert(1 + dice.below(cluster.members));
        }
        minority
    }

    /// Applies the next fault of the schedule.
    ///
    /// # Errors
    /// A member that does not start again from its directory.
    pub async fn strike(&mut self, cluster: &Cluster, dice: &mut Dice) -> Result<Struck, SimError> {
        let all: BTreeSet<u64> = (1..=cluster.members).collect();
        let routers: Vec<u64> = cluster.routers.iter().map(|r| r.id).collect();
        let net = cluster.net();
        let mut links = Links::healthy();
        self.split = None;
        let mut hold = dice.millis(400, 2000);
        let text = match dice.below(11) {
            0 => "heal".to_owned(),
            1 | 2 => {
                // Random halves: the smaller side is a minority.
                let minority = Self::random_minority(cluster, dice);
                let majority: BTreeSet<u64> = all.difference(&minority).copied().collect();
                links.cut = cut_between(&minority, &majority);
                self.split = Some(Split {
                    minority: minority.clone(),
                });
                format!("halves: {minority:?} | {majority:?}")
            }
            3 => {
                let leader = current_leader(cluster).unwrap_or(1);
                let minority = BTreeSet::from([leader]);
                let majority: BTreeSet<u64> = all.difference(&minority).copied().collect();
                links.cut = cut_between(&minority, &majority);
                self.split = Some(Split { minority });
                format!("isolated leader n{leader}")
            }
            4 => {
                // Bridge: two sides that cannot talk, and one node that talks to both.
                let bridge = 1 + dice.below(cluster.members);
                let rest: Vec<u64> = all.iter().copied().filter(|&n| n != bridge).collect();
                let (left, right) = rest.split_at(rest.len() / 2);
                let left: BTreeSet<u64> = left.iter().copied().collect();
                let right: BTreeSet<u64> = right.iter().copied().collect();
                links.cut = cut_between(&left, &right);
                format!("bridge n{bridge} between {left:?} and {right:?}")
            }
            5 => {
                // Asymmetric: the leader's messages go out, nothing comes back to it.
                let leader = current_leader(cluster).unwrap_or(1);
                for &n in &all {
                    if n != leader {
                        links.cut.insert((n, leader));
                    }
                }
                format!("one-way: nothing reaches leader n{leader}")
            }
            6 => {
                links.drop_percent = 5 + dice.below(25);
                links.delay_max_ms = 20 + dice.below(150);
                format!(
                    "lossy: {}% drops, delays up to {} ms",
                    links.drop_percent, links.delay_max_ms
                )
            }
            7 => {
                let victim = 1 + dice.below(cluster.members);
                cluster.crash(victim).await;
                format!("crash n{victim}")
            }
            8 if !routers.is_empty() => {
                // A router cut off from every member: it must come to say its map is stale,
                // and hold long enough for that bound to be checked.
                let router = routers[dice.below(routers.len() as u64) as usize];
                links.cut = cut_between(&BTreeSet::from([router]), &all);
                hold = super::history::stale_bound() + dice.millis(500, 1500);
                format!("router r{router} cut off from every member")
            }
            9 if !routers.is_empty() => {
                // Halves, and a router that sees only the minority side.
                let minority = Self::random_minority(cluster, dice);
                let majority: BTreeSet<u64> = all.difference(&minority).copied().collect();
                let router = routers[dice.below(routers.len() as u64) as usize];
                links.cut = cut_between(&minority, &majority);
                links
                    .cut
                    .extend(cut_between(&BTreeSet::from([router]), &majority));
                self.split = Some(Split {
                    minority: minority.clone(),
                });
                hold = super::history::stale_bound() + dice.millis(500, 1500);
                format!(
                    "halves {minority:?} | {majority:?}, router r{router} sees only {minority:?}"
                )
            }
            _ => {
                let mut restarted = Vec::new();
                for id in 1..=cluster.members {
                    if !net.members.borrow().contains_key(&id) {
                        cluster.start(id).await?;
                        restarted.push(id);
                    }
                }
                format!("restart {restarted:?}")
            }
        };
        *net.links.borrow_mut() = links;
        Ok(Struck { text, hold })
    }
}
