//! Synthetic leads: two latent traits drive every observed feature.
//!
//! * engagement `e ~ N(0, 1)`: how responsive the lead is;
//! * intent `i = 0.4 e + 0.92 z`, `z ~ N(0, 1)`: how close to buying.
//!
//! Values are rounded as a CRM would store them, and every label rule in
//! this module's siblings reads the rounded values, so the probabilities it
//! computes are exactly the best any model of the written columns can do.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, LogNormal, Normal, Poisson};

/// The logistic function.
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    Poisson::new(mean.max(1e-9))
        .expect("positive mean")
        .sample(rng)
}

fn normal(rng: &mut ChaCha8Rng, sd: f64) -> f64 {
    Normal::new(0.0, sd).expect("positive sd").sample(rng)
}

/// One lead's observed features, named as in `LeadProfile`.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub struct Lead {
    pub days_since_first_contact: f64,
    pub days_since_last_contact: f64,
    pub days_since_last_reply: f64,
    pub email_open_rate: f64,
    pub email_click_rate: f64,
    pub sms_reply_rate: f64,
    pub call_answer_rate: f64,
    pub video_join_rate: f64,
    pub messages_sent_30d: f64,
    pub messages_received_30d: f64,
    pub avg_response_hours: f64,
    pub sentiment_score: f64,
    pub complaints_90d: f64,
    pub website_visits_30d: f64,
    pub listings_viewed_30d: f64,
    pub saved_searches: f64,
    pub showings_attended: f64,
    pub pre_approved: f64,
    pub mortgage_calculator_uses_30d: f64,
    pub budget_k_usd: f64,
}

impl Lead {
    /// Draws a lead.
    pub fn sample(rng: &mut ChaCha8Rng) -> Lead {
        let e = normal(rng, 1.0);
        let i = 0.4 * e + 0.92 * normal(rng, 1.0);
        let exp = |rng: &mut ChaCha8Rng, mean: f64| {
            Exp::new(1.0 / mean).expect("positive mean").sample(rng)
        };
        let email_open_rate = round(sigmoid(0.9 * e - 0.2 + normal(rng, 0.6)), 3);
        Lead {
            days_since_first_contact: round(rng.random_range(1.0..365.0), 1),
            days_since_last_contact: round(exp(rng, 4.0), 1),
            days_since_last_reply: round(exp(rng, 6.0 * (-0.7 * e).exp()).min(180.0), 1),
            email_open_rate,
            email_click_rate: round(
                email_open_rate * sigmoid(0.6 * i - 1.0 + normal(rng, 0.5)),
                3,
            ),
            sms_reply_rate: round(sigmoid(0.8 * e - 0.6 + normal(rng, 0.8)), 3),
            call_answer_rate: round(sigmoid(0.6 * e - 0.8 + normal(rng, 0.8)), 3),
            video_join_rate: round(sigmoid(0.5 * e + 0.5 * i - 1.2 + normal(rng, 0.8)), 3),
            messages_sent_30d: poisson(rng, 6.0),
            messages_received_30d: poisson(rng, 3.0 * (0.5 * e).exp()),
            avg_response_hours: round(
                LogNormal::new(10f64.ln() - 0.5 * e, 0.6)
                    .expect("valid")
                    .sample(rng)
                    .min(240.0),
                1,
            ),
            sentiment_score: round((0.6 * e + 0.3 * i + normal(rng, 0.5)).tanh(), 3),
            complaints_90d: poisson(rng, 0.3 * (-0.8 * e).exp()),
            website_visits_30d: poisson(rng, 4.0 * (0.5 * i).exp()),
            listings_viewed_30d: poisson(rng, 6.0 * (0.7 * i).exp()),
            saved_searches: poisson(rng, 0.8 * (0.6 * i).exp()),
            showings_attended: poisson(rng, 0.6 * (0.8 * i).exp()),
            pre_approved: f64::from(u8::from(rng.random_bool(sigmoid(1.2 * i - 0.8)))),
            mortgage_calculator_uses_30d: poisson(rng, (0.7 * i - 0.3).exp()),
            budget_k_usd: (LogNormal::new(420f64.ln(), 0.35)
                .expect("valid")
                .sample(rng)
                / 5.0)
                .round()
                * 5.0,
        }
    }

    /// Values in `LEAD_FEATURES` order.
    pub fn values(&self) -> [f64; 20] {
        [
            self.days_since_first_contact,
            self.days_since_last_contact,
            self.days_since_last_reply,
            self.email_open_rate,
            self.email_click_rate,
            self.sms_reply_rate,
            self.call_answer_rate,
            self.video_join_rate,
            self.messages_sent_30d,
            self.messages_received_30d,
            self.avg_response_hours,
            self.sentiment_score,
            self.complaints_90d,
            self.website_visits_30d,
            self.listings_viewed_30d,
            self.saved_searches,
            self.showings_attended,
            self.pre_approved,
            self.mortgage_calculator_uses_30d,
            self.budget_k_usd,
        ]
    }

    /// The channel the lead answers best: 0 email, 1 sms, 2 call, 3 video.
    pub fn preferred_channel(&self) -> usize {
        let scores = [
            self.email_open_rate * 0.9,
            self.sms_reply_rate,
            self.call_answer_rate * 1.1,
            self.video_join_rate * 1.2,
        ];
        let mut best = 0;
        for (channel, score) in scores.iter().enumerate() {
            if *score > scores[best] {
                best = channel;
            }
        }
        best
    }

    /// Local hour around which the lead answers: 10 for leads with a budget
    /// over 500k (business hours), else 19 (evenings).
    pub fn active_hour(&self) -> f64 {
        if self.budget_k_usd > 500.0 {
            10.0
        } else {
            19.0
        }
    }

    /// Segment for message optimization: 2 hot (pre-approved with two or
    /// more showings), 1 warm (a showing or six or more listings viewed),
    /// 0 cold.
    pub fn segment(&self) -> usize {
        if self.pre_approved > 0.5 && self.showings_attended >= 2.0 {
            2
        } else if self.showings_attended >= 1.0 || self.listings_viewed_30d >= 6.0 {
            1
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nurture_models::features::LEAD_FEATURES;
    use rand::SeedableRng;

    #[test]
    fn sampled_leads_are_valid_lead_profiles() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..2_000 {
            let lead = Lead::sample(&mut rng);
            for (feature, value) in LEAD_FEATURES.iter().zip(lead.values()) {
                assert!(feature.unit.accepts(value), "{} = {value}", feature.name);
            }
        }
    }
}
