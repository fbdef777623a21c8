"""The verification phrase's word lists in the PC user's other languages.

Each list has exactly as many words as the English one (phrase.py), so a phrase
has the same strength in every language (docs/i18n.md). The words are common,
concrete nouns of 3 to 10 plain letters (no accents, umlauts or ``ij``/``ei``
look-alikes to spell on the phone), none offensive, none sounding like another
of its list (tests/model/test_phrase_languages.py checks what a machine can).
"""

from __future__ import annotations

FRENCH = tuple(
    """
    abeille abricot agneau aigle aiguille album algue allumette amande ampoule ananas
    anneau antenne arbre ardoise armoire artichaut asperge autruche avion avocat avoine
    bagage baignoire balai balcon baleine ballon bambou banane bandeau banjo barque
    barrage bassin bateau biscuit bison blouson bobine bocal bonbon bonnet botte bouchon
    bougie bouquet boussole bouteille bouton bracelet brebis brioche brique brosse
    brouette buffet buisson bureau cabane cabine cacao cactus cadeau cagoule cahier
    caillou calepin camion canal canard canari carafe caramel carnet carotte carton
    casque casserole castor ceinture cerfeuil cerise chalet chameau chapeau chaton
    chaussette chemin chemise chenille cheval chocolat cigale cirque citadelle citron
    clairon clavier cloche clown cocotte coffre colibri collier concombre coquelicot
    coquille corbeau corde cornet cornichon costume coton coussin couteau crabe crapaud
    cravate crayon crocodile croissant cube dauphin dentelle diamant dinosaure domino
    dragon drapeau dromadaire enclume escargot fanfare farine fauteuil fenouil ficelle
    figue flamme flocon fontaine foulard fourchette fourmi fourneau fraise framboise
    frigo fromage fusain girafe gorille gourde grenier grillon guitare hamac hamster
    harpe hibou homard horloge igloo jambon jardin jonquille journal kayak kiwi lampe
    lapin lavande licorne lion loupe lutin macaron maison mangue manteau marmotte
    marteau melon miroir mouchoir mouette moulin mouton muguet myrtille navet nuage
    olive orange oreiller ours panda panier papillon parapluie patin peigne perroquet
    piano pigeon pinceau pingouin pizza placard plume poivron pomme poney potiron
    poussin prune puzzle radis raisin raquette renard requin rideau robot rocher rubis
    sable sabot salade sapin sardine saumon savon serpent sirop soleil souris stylo
    tambour tapis taupe tigre tomate tortue toupie tracteur trompette tulipe vache
    valise vanille violon volcan wagon
    """.split()  # noqa: SIM905 - a word list reads better as text
)

DUTCH = tuple(
    """
    aardbei ananas anker appel auto avond badpak bakker bal balkon ballon bamboe banaan
    banjo bank barst bed hoed beitel beker berg heuvel bever bezem blad bliksem bloem
    bloes boek bokaal bolhoed boom boon boot bord borstel bos boter brief bril broek
    brood brug bus cactus camera cirkel citroen clown dak dal dans deken den deuk deur
    dijk dolfijn donder doos dorp douche draad drempel druif duif duim jurk eekhoorn
    eend egel eik eiland emmer etiket fakkel fazant fiets fles fluit fontein foto
    framboos gans garnaal geit gember gieter giraf gitaar glas glijbaan gordijn goud
    graan gras griffel grot gum haai haan haas hagel hamer handdoek handschoen harp
    haven hond honing hut ijzer jas kaars kaart kaas kameel kast kasteel kat kers ketel
    kever kip klok knoop koe koek koffer koffie kom komkommer konijn koper krab krant
    kreeft kussen laars ladder lade lamp leeuw lelie lepel maan markt meer melk merel
    mes mier molen muis mus muur naald olifant ooievaar orgel otter oven paard pan
    pannenkoek papegaai paprika paraplu park pauw peer pen piano plein pop potlood
    puzzel raaf raam radio raket regen rivier robot roos rots schaap schaar schommel
    school schrift schroef sjaal slak sleutel slot sneeuw soep sok specht spiegel
    spijker spin stad station steen ster stoel storm straat strand suiker taart tafel
    inkt tas tent thee tijger tol tomaat toren tractor trap trein trommel trompet tuin
    tulp uil viool vlieger vliegtuig vlinder vork vos vuur wafel wagen walvis water wilg
    wind winkel wolf wolk wortel zaag zand zebra zee zilver zon zwaan zwembad
    """.split()  # noqa: SIM905 - a word list reads better as text
)

GERMAN = tuple(
    """
    abend ameise ananas anker apfel armband auto backofen bagger bahnhof balkon ball
    ballon bambus banane banjo bank bart baum becher becken berg besen bett beutel biber
    biene bild birke birne blatt blitz blume bohne bonbon boot brezel brief brille brot
    brunnen buch burg bus butter dach decke delfin delle diamant donner dorf dose
    drachen drossel dusche eiche eichel eimer eisen elefant ente eule faden fahrrad
    falke fasan fass feder felsen fenster feuer flagge flasche flur fluss foto frosch
    fuchs gabel gans garnele garten gecko geige gewitter giraffe gitarre glas glocke
    gold gras gurke gurt hafen hafer hagel hai hammer handschuh handtuch harfe harke
    hase haus hecht heft hemd herz himmel hirsch hobel holz honig horn hose huhn hummer
    hund hut igel insekt insel jacke jaguar koala kaffee kajak kaktus kamel kamera kanal
    kanu kapuze karotte karte kartoffel kastanie katze kegel keks kelle keller kerze
    kessel kiesel kirsche kissen klavier knopf koffer krabbe kuchen kupfer lampe leiter
    lilie mantel markt mauer maus meer messer milch mond nadel nagel nudel ofen orgel
    otter papagei park pfanne pfau pfeffer pferd pinguin pizza platz puppe puzzle rabe
    radio rakete regen roller rose sahne salz sand schaf schal schere schiff schirm
    schloss schnecke schnee schrank schraube schule schwan silber socke sofa sonne spatz
    specht spiegel spinne stadt stein stern stiefel stift storch strand stuhl sturm
    suppe tal tanne tasche tasse taube teller tiger tisch tomate topf traktor treppe
    trommel trompete tulpe turm waffel wagen wald wasser weide wind wolf wolke zange
    zebra zeitung zelt ziege zitrone zucker zug zweig zwiebel
    """.split()  # noqa: SIM905 - a word list reads better as text
)
