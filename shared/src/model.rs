//! The models users can run, as the seeds name them, and their price in credits.

use crate::ids::Credits;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Model {
    /// kie.ai GPT-4o image.
    #[serde(rename = "kie_4o")]
    Kie4o,
    /// kie.ai Flux Kontext.
    #[serde(rename = "kie_kontext")]
    KieKontext,
}

impl Model {
    pub const ALL: [Model; 2] = [Model::Kie4o, Model::KieKontext];

    pub fn parse(raw: &str) -> Option<Model> {
        Self::ALL.into_iter().find(|m| m.as_str() == raw)
    }

    /// The name stored in `ai_tasks.external_provider` and used in R2 keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Model::Kie4o => "kie_4o",
            Model::KieKontext => "kie_kontext",
        }
    }

    /// What one generation costs. The cost is copied onto the task when it is reserved, so a
    /// price change never alters a task already in flight.
    pub fn cost(self) -> Credits {
        match self {
            Model::Kie4o => Credits(2),
            Model::KieKontext => Credits(3),
        }
    }

    /// How many input images the provider accepts.
    pub fn max_input_images(self) -> usize {
        match self {
            Model::Kie4o => 5,
            Model::KieKontext => 1,
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_table_is_positive_and_names_round_trip() {
        for m in Model::ALL {
            assert!(m.cost().get() > 0, "{m} must cost something");
            assert_eq!(Model::parse(m.as_str()), Some(m));
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.as_str())
            );
        }
        assert_eq!(Model::Kie4o.cost(), Credits(2));
        assert_eq!(Model::KieKontext.cost(), Credits(3));
        assert_eq!(Model::parse("dall-e"), None);
    }
}
