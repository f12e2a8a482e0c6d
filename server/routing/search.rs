//! Skill search: an inverted index over every manifest's skills, kept in
//! memory beside the availability view so that one read lock answers text
//! relevance and availability together (a SQL query would need a round trip
//! and could not rank by the view's live scores; BENCHMARKS.md measures
//! both). Manifests are few and system-wide, so one index serves all
//! tenants; a tenant only ever sees the hits of its own configurations.
//!
//! The score is documented with `RoutingService.SearchAgents` in
//! routing.proto.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::manifests::card::Skill;

/// Most terms of a query.
pub const MAX_TERMS: usize = 16;
/// Most characters of a query.
pub const MAX_QUERY_CHARS: usize = 512;
/// A term this long or longer also matches the words it begins.
const PREFIX_FROM: usize = 3;
/// Most words one prefix expands to, so that a short prefix stays cheap.
const MAX_EXPANSION: usize = 64;

/// Where in a skill a word is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Name,
    Id,
    Tags,
    Description,
    Examples,
}

impl Field {
    /// The field's weight in a skill's relevance.
    fn weight(self) -> f64 {
        match self {
            Field::Name | Field::Id => 4.0,
            Field::Tags => 3.0,
            Field::Description => 2.0,
            Field::Examples => 1.0,
        }
    }

    /// The name a query and an explanation use.
    pub fn name(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Id => "id",
            Field::Tags => "tags",
            Field::Description => "description",
            Field::Examples => "examples",
        }
    }

    fn parse(prefix: &str) -> Option<Field> {
        Some(match prefix {
            "name" => Field::Name,
            "id" => Field::Id,
            "tag" | "tags" => Field::Tags,
            "description" => Field::Description,
            "example" | "examples" => Field::Examples,
            _ => return None,
        })
    }
}

/// One term of a query, with the field it is restricted to.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub word: String,
    pub field: Option<Field>,
}

/// Parses a query: words, each optionally `field:word`; the words are
/// lowercased and split as indexed text is. A bad query is
/// `INVALID_ARGUMENT` naming `query` and the character.
pub fn parse(query: &str) -> Result<Vec<Term>> {
    if query.chars().count() > MAX_QUERY_CHARS {
        return Err(Error::invalid(
            "query",
            format!("must be at most {MAX_QUERY_CHARS} characters"),
        ));
    }
    if query.contains('\0') {
        return Err(Error::invalid("query", "must not contain NUL (U+0000)"));
    }
    let mut terms = Vec::new();
    let mut at = 1;
    for token in query.split(' ') {
        let (field, text) = match token.split_once(':') {
            Some((prefix, rest)) => match Field::parse(&prefix.to_lowercase()) {
                Some(f) => (Some(f), rest),
                None => {
                    return Err(Error::invalid(
                        "query",
                        format!(
                            "at character {at}: unknown field {prefix:?} (name, id, tag, description, example)"
                        ),
                    ));
                }
            },
            None => (None, token),
        };
        let words = words(text);
        if field.is_some() && words.is_empty() {
            return Err(Error::invalid(
                "query",
                format!("at character {at}: a field needs a word after ':'"),
            ));
        }
        terms.extend(words.into_iter().map(|word| Term { word, field }));
        at += token.chars().count() + 1;
    }
    if terms.is_empty() {
        return Err(Error::invalid("query", "is required: at least one word"));
    }
    if terms.len() > MAX_TERMS {
        return Err(Error::invalid(
            "query",
            format!("at most {MAX_TERMS} words"),
        ));
    }
    Ok(terms)
}

/// Text as words: lowercase runs of letters and digits.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct Posting {
    manifest: Uuid,
    skill: u16,
    field: Field,
}

#[derive(Debug, Default)]
struct Postings {
    list: Vec<Posting>,
    /// How many distinct skills hold the word (its document frequency).
    skills: usize,
}

/// A manifest's indexed skills: ids and names for answers, its words (with
/// how many of its skills hold each) to take them out again.
#[derive(Debug)]
struct Doc {
    skills: Vec<(String, String)>,
    words: Vec<(String, usize)>,
}

/// The index of all manifests' skills.
#[derive(Debug, Default)]
pub struct SkillIndex {
    words: BTreeMap<String, Postings>,
    docs: HashMap<Uuid, Doc>,
    skills: usize,
}

/// One query term's best match in a skill.
#[derive(Debug, Clone)]
pub struct TermHit {
    pub term: String,
    pub field: Field,
    pub word: String,
    pub contribution: f64,
}

/// A skill that matched.
#[derive(Debug, Clone)]
pub struct SkillHit {
    pub id: String,
    pub name: String,
    pub relevance: f64,
    /// Each matched term (filled only when asked to explain).
    pub terms: Vec<TermHit>,
}

/// A manifest that matched: its best skill's relevance and its matched
/// skills, best first.
#[derive(Debug, Clone)]
pub struct ManifestHit {
    pub relevance: f64,
    pub skills: Vec<SkillHit>,
}

impl SkillIndex {
    /// Indexes (or indexes again) manifest `id`'s skills; a manifest without
    /// skills is indexed by its capability names, each as a skill whose id,
    /// name and tag it is.
    pub fn put(&mut self, id: Uuid, skills: &[Skill], capabilities: &[String]) {
        self.remove(id);
        let fallback: Vec<Skill>;
        let skills = if skills.is_empty() {
            fallback = capabilities
                .iter()
                .map(|c| Skill {
                    id: c.clone(),
                    name: c.clone(),
                    ..Skill::default()
                })
                .collect();
            &fallback
        } else {
            skills
        };
        // Per word, the skills of this manifest that hold it: the word's
        // document frequency moves by their number, without a recount.
        let mut posted: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for (n, skill) in skills.iter().enumerate().take(usize::from(u16::MAX)) {
            let n = n as u16;
            let fields: [(Field, Vec<String>); 5] = [
                (Field::Name, words(&skill.name)),
                (Field::Id, words(&skill.id)),
                (
                    Field::Tags,
                    skill.tags.iter().flat_map(|t| words(t)).collect(),
                ),
                (Field::Description, words(&skill.description)),
                (
                    Field::Examples,
                    skill.examples.iter().flat_map(|e| words(e)).collect(),
                ),
            ];
            for (field, mut list) in fields {
                list.sort_unstable();
                list.dedup();
                for word in list {
                    self.words
                        .entry(word.clone())
                        .or_default()
                        .list
                        .push(Posting {
                            manifest: id,
                            skill: n,
                            field,
                        });
                    let holders = posted.entry(word).or_default();
                    if holders.last() != Some(&n) {
                        holders.push(n);
                    }
                }
            }
        }
        let words: Vec<(String, usize)> = posted
            .into_iter()
            .map(|(word, holders)| (word, holders.len()))
            .collect();
        for (word, holders) in &words {
            if let Some(p) = self.words.get_mut(word) {
                p.skills += holders;
            }
        }
        self.skills += skills.len();
        self.docs.insert(
            id,
            Doc {
                skills: skills
                    .iter()
                    .map(|s| (s.id.clone(), s.name.clone()))
                    .collect(),
                words,
            },
        );
    }

    /// Takes manifest `id` out of the index.
    pub fn remove(&mut self, id: Uuid) {
        let Some(doc) = self.docs.remove(&id) else {
            return;
        };
        self.skills -= doc.skills.len();
        for (word, holders) in doc.words {
            if let Some(p) = self.words.get_mut(&word) {
                p.list.retain(|p| p.manifest != id);
                p.skills -= holders;
                if p.list.is_empty() {
                    self.words.remove(&word);
                }
            }
        }
    }

    /// The words a term matches: itself, and those it begins when it is
    /// long enough.
    fn matching<'a>(
        &'a self,
        word: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Postings)> + 'a {
        let prefix = word.chars().count() >= PREFIX_FROM;
        self.words
            .range::<str, _>((std::ops::Bound::Included(word), std::ops::Bound::Unbounded))
            .take_while(move |(w, _)| {
                if prefix {
                    w.starts_with(word)
                } else {
                    w.as_str() == word
                }
            })
            .take(MAX_EXPANSION)
    }

    /// The manifests whose skills match `terms`, with their relevance (see
    /// routing.proto); `explain` also keeps every term's match.
    pub fn query(&self, terms: &[Term], explain: bool) -> HashMap<Uuid, ManifestHit> {
        let total = self.skills.max(1) as f64;
        // Per skill: the sum of its terms' best contributions, which terms
        // matched (a bit each), and the matches when explaining.
        let mut skills: HashMap<(Uuid, u16), (f64, u32, Vec<TermHit>)> = HashMap::new();
        for (n, term) in terms.iter().enumerate() {
            let mut best: HashMap<(Uuid, u16), (f64, Field, &str)> = HashMap::new();
            for (word, postings) in self.matching(&term.word) {
                let idf = (1.0 + total / postings.skills.max(1) as f64).ln();
                for p in &postings.list {
                    if term.field.is_some_and(|f| f != p.field) {
                        continue;
                    }
                    let c = p.field.weight() * idf;
                    let slot = best
                        .entry((p.manifest, p.skill))
                        .or_insert((0.0, p.field, word));
                    if c > slot.0 {
                        *slot = (c, p.field, word);
                    }
                }
            }
            for (key, (c, field, word)) in best {
                let s = skills.entry(key).or_insert((0.0, 0, Vec::new()));
                s.0 += c;
                s.1 |= 1 << n;
                if explain {
                    s.2.push(TermHit {
                        term: term.word.clone(),
                        field,
                        word: word.to_owned(),
                        contribution: c,
                    });
                }
            }
        }
        let mut hits: HashMap<Uuid, ManifestHit> = HashMap::new();
        let n_terms = terms.len() as f64;
        for ((manifest, skill), (sum, mask, terms)) in skills {
            let Some(doc) = self.docs.get(&manifest) else {
                continue;
            };
            let (id, name) = doc.skills[usize::from(skill)].clone();
            let relevance = sum * f64::from(mask.count_ones()) / n_terms;
            let hit = hits.entry(manifest).or_insert(ManifestHit {
                relevance: 0.0,
                skills: Vec::new(),
            });
            hit.relevance = hit.relevance.max(relevance);
            hit.skills.push(SkillHit {
                id,
                name,
                relevance,
                terms,
            });
        }
        for hit in hits.values_mut() {
            hit.skills
                .sort_by(|a, b| b.relevance.total_cmp(&a.relevance).then(a.id.cmp(&b.id)));
        }
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skill(id: &str, name: &str, description: &str, tags: &[&str], examples: &[&str]) -> Skill {
        Skill {
            id: id.into(),
            name: name.into(),
            description: description.into(),
            tags: tags.iter().map(|t| (*t).into()).collect(),
            examples: examples.iter().map(|e| (*e).into()).collect(),
            ..Skill::default()
        }
    }

    #[test]
    fn a_name_match_outranks_an_example_match_and_prefixes_match() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut index = SkillIndex::default();
        index.put(
            a,
            &[skill("translate", "Translate documents", "", &[], &[])],
            &[],
        );
        index.put(
            b,
            &[skill(
                "summarize",
                "Summarize",
                "",
                &[],
                &["translate this and summarize"],
            )],
            &[],
        );
        let hits = index.query(&parse("translate").unwrap(), true);
        assert!(hits[&a].relevance > hits[&b].relevance, "{hits:?}");
        assert_eq!(hits[&b].skills[0].terms[0].field, Field::Examples);
        let hits = index.query(&parse("transl").unwrap(), false);
        assert_eq!(hits.len(), 2);
        let hits = index.query(&parse("name:translate").unwrap(), false);
        assert_eq!(hits.keys().collect::<Vec<_>>(), vec![&a]);
        index.remove(a);
        assert_eq!(index.query(&parse("documents").unwrap(), false).len(), 0);
        assert_eq!(index.query(&parse("summarize").unwrap(), false).len(), 1);
    }

    #[test]
    fn frequencies_after_updates_equal_a_fresh_index() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = [
            skill("x", "alpha beta", "gamma", &["beta"], &[]),
            skill("y", "beta", "", &[], &[]),
        ];
        let second = [skill("z", "beta delta", "", &[], &["alpha"])];
        let other = [skill("w", "alpha", "beta", &[], &[])];
        let mut updated = SkillIndex::default();
        updated.put(a, &first, &[]);
        updated.put(b, &other, &[]);
        updated.put(a, &second, &[]);
        let mut fresh = SkillIndex::default();
        fresh.put(b, &other, &[]);
        fresh.put(a, &second, &[]);
        for q in ["alpha", "beta", "delta", "gamma", "alpha beta"] {
            let terms = parse(q).unwrap();
            let (u, f) = (updated.query(&terms, false), fresh.query(&terms, false));
            assert_eq!(u.len(), f.len(), "{q}");
            for (id, hit) in &f {
                assert!((u[id].relevance - hit.relevance).abs() < 1e-12, "{q}");
            }
        }
        assert_eq!(updated.skills, fresh.skills);
    }

    #[test]
    fn capabilities_stand_in_for_missing_skills_and_bad_queries_name_the_character() {
        let id = Uuid::new_v4();
        let mut index = SkillIndex::default();
        index.put(id, &[], &["code_editing".into()]);
        assert!(
            index
                .query(&parse("code editing").unwrap(), false)
                .contains_key(&id)
        );
        let e = parse("ok colour:red").unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { ref reason, .. } if reason.contains("at character 4")),
            "{e:?}"
        );
        assert!(parse("  ").is_err());
    }
}
